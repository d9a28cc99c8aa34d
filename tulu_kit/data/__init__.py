"""Data: the unified chat format, converters, mixer, chat templates, tokenization and packing (notebook 01)."""
