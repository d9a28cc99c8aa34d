"""Data: the unified chat format, converters, mixer, chat templates, tokenization and packing (notebook 01).

``validate`` (what a good row is), ``formats`` (published layouts -> messages), ``sources`` (files, URLs, Hub),
``mixer`` (dataset_mixer_list semantics), ``templates`` (Jinja chat templates), ``tokenize`` (label masking),
``packing`` (padding-free and padded collators), ``decontam`` (n-gram overlap), ``synthetic`` (quickstart data),
``stage`` (the ``data`` stage: ``DataConfig`` / ``run``).
"""
