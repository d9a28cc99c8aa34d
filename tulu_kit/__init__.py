"""tulu-kit: a notebook-first kit for instruction-tuning open language models (the Tulu recipes)."""

__version__ = "0.1.0"

import os as _os

# DeepSpeed warns "Setting accelerator to CPU ... unable to detect it" whenever it is imported on a machine without
# a GPU; say so up front instead (a user's own DS_ACCELERATOR wins).
if not _os.path.exists("/dev/nvidiactl"):
    _os.environ.setdefault("DS_ACCELERATOR", "cpu")

import logging as _logging
import warnings as _warnings

# Library messages a student cannot act on, dropped at their source (the kit's own code already uses the new
# spellings; each line names where the message comes from and why it is harmless):
# - peft probes `model.is_gradient_checkpointing` with getattr, which transformers 5 deprecates: one FutureWarning
#   per probe (dozens per GRPO / PPO run);
_warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)


class _DropMessages(_logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: _logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# - bitsandbytes on an AVX512-BF16 CPU tries to download an optional kernel from the Hub ("pip install kernels")
#   and falls back to its own, which QLoRA on CPU uses;
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessages("Failed to load CPU gemm_4bit_forward")
)


# - a causal LM loaded as a sequence classifier (a reward or value model started from a policy, as the recipes do)
#   gets a "LOAD REPORT" table that only says its new head is new: lm_head unused, score initialised. Any other
#   report (a key really missing or unexpected) still shows.
class _NewHeadOnly(_logging.Filter):
    def filter(self, record: _logging.LogRecord) -> bool:
        text = record.getMessage()
        if "ForSequenceClassification" not in text or "LOAD REPORT" not in text:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.count("|") >= 2]
        rows = [r for r in rows[1:] if r[0] and not set(r[0]) <= {"-", "+"}]  # skip the header and the rule
        expected = {("lm_head.", "UNEXPECTED"), ("score.", "MISSING")}
        return not rows or not all((r[0].split(".")[0] + ".", r[1]) in expected for r in rows)


_logging.getLogger("transformers.modeling_utils").addFilter(_NewHeadOnly())
# - mergekit sets `config.torch_dtype` on the merged model's config (mergekit/merge.py), which transformers 5 renamed.
_logging.getLogger("transformers.configuration_utils").addFilter(_DropMessages("`torch_dtype` is deprecated"))
