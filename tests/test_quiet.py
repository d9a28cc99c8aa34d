"""Library messages a student cannot act on are dropped at their source; others still get through."""

from __future__ import annotations

import logging
import subprocess
import sys

import tulu_kit  # noqa: F401  (installs the filters)


def test_known_library_noise_is_dropped_and_the_rest_is_kept(caplog):
    with caplog.at_level(logging.WARNING):
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"
        )
        logging.getLogger("transformers.configuration_utils").warning(
            "`torch_dtype` is deprecated! Use `dtype`"
        )
        logging.getLogger("transformers.configuration_utils").warning("something a student should read")
    assert [r.getMessage() for r in caplog.records] == ["something a student should read"]
    # in a fresh interpreter, as in a notebook's kernel (pytest's own filters ignore every FutureWarning)
    code = (
        "import warnings, tulu_kit\n"
        "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6.', FutureWarning)\n"
        "warnings.warn('another FutureWarning', FutureWarning)\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr
    assert "another FutureWarning" in err and "is_gradient_checkpointing" not in err
