"""tulu-kit: a notebook-first kit for instruction-tuning open language models (the Tulu recipes)."""

__version__ = "0.1.0"

import os as _os

# DeepSpeed warns "Setting accelerator to CPU ... unable to detect it" whenever it is imported on a machine without
# a GPU; say so up front instead (a user's own DS_ACCELERATOR wins).
if not _os.path.exists("/dev/nvidiactl"):
    _os.environ.setdefault("DS_ACCELERATOR", "cpu")
