"""tulu-kit: a notebook-first kit for instruction-tuning open language models (the Tulu recipes)."""

__version__ = "0.1.0"
