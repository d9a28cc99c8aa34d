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


NEW_HEAD_REPORT = (
    "\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: runs/demo/dpo/model\nKey            | Status     | \n"
    "---------------+------------+-\nlm_head.weight | UNEXPECTED | \nscore.weight   | MISSING    | \n\nNotes:\n"
    "- UNEXPECTED:\tcan be ignored when loading from different task/architecture; not ok if you expect identical arch.\n"
)


def test_a_reward_or_value_head_started_from_a_policy_loads_quietly(tiny_model, capfd):
    from transformers import AutoModelForSequenceClassification

    capfd.readouterr()
    AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=1)
    assert "LOAD REPORT" not in capfd.readouterr().err  # the real report of the recipes' value/reward models
    log = logging.getLogger("transformers.modeling_utils")

    def shown(message: str) -> bool:
        record = log.makeRecord(log.name, logging.WARNING, __file__, 0, message, (), None)
        return all(f.filter(record) for f in log.filters)

    assert not shown(NEW_HEAD_REPORT)
    real_problem = NEW_HEAD_REPORT.replace("score.weight   | MISSING", "model.norm.weight | MISSING")
    assert shown(real_problem) and shown("something else")


def test_no_notebook_cell_ends_in_a_bare_plot_call():
    """A cell whose last line is `df.plot.bar(...)` prints `<Axes: ...>` under its figure."""
    import ast
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bare = []
    for path in sorted([*root.glob("eval/*.ipynb"), *root.glob("notebooks/*.ipynb")]):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            body = ast.parse("".join(cell["source"])).body
            last = body[-1] if body else None
            if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
                func = last.value.func
                if isinstance(func, ast.Attribute) and func.attr in {"plot", "bar", "barh", "hist", "line"}:
                    bare.append(f"{path.relative_to(root)} cell {i}")
    assert not bare, f"end these with plt.show() or assign the Axes: {bare}"
