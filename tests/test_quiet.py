"""Library messages a student cannot act on are dropped at their source; others still get through."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

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


def test_the_log_summary_prints_about_ten_rows_whatever_the_steps(capsys):
    """A quickstart SFT logs every one of its 260 steps: the train cell shows 11 rows, the evaluations' rows, and
    the first and last loss."""
    from types import SimpleNamespace

    from tulu_kit.training import log_summary

    summary = log_summary(Path("runs/lab/sft/log_history.jsonl"))
    state = SimpleNamespace(max_steps=260, global_step=0, is_world_process_zero=True, log_history=[])
    summary.on_train_begin(None, state, None)
    for step in range(1, 261):
        state.global_step = step
        logs = {"loss": 5.0 - step / 100, "learning_rate": 1e-3, "grad_norm": 1.0}
        state.log_history.append(logs)
        summary.on_log(None, state, None, logs=logs)
        if step in (130, 260):
            summary.on_log(None, state, None, logs={"eval_loss": 1.25})
    summary.on_train_end(None, state, None)
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0].startswith("training 260 steps: a row every 26 steps here")
        and "log_history.jsonl" in lines[0]
    )
    steps = [int(line.split()[1].split("/")[0]) for line in lines if "  loss " in line]
    assert steps == [1, 26, 52, 78, 104, 130, 156, 182, 208, 234, 260]
    assert [line.split()[1] for line in lines if "held-out loss 1.25" in line] == ["130/260", "260/260"]
    assert "lr 1.00e-03" in lines[1] and "grad_norm" not in "".join(lines)
    assert lines[-1].startswith("done: 260 steps in") and lines[-1].endswith("loss 4.99 -> 2.4")
    assert len(lines) == 15


def test_a_train_cell_shows_the_summary_not_a_line_per_step(tiny_model, tmp_path, capfd):
    """In a real run the Trainer's own line per logged step (a dict) is gone, its progress bar stays, and
    log_history.jsonl keeps every step."""
    from tulu_kit.data.synthetic import synthetic_sft
    from tulu_kit.io import read_jsonl, write_jsonl
    from tulu_kit.sft import SFTConfig, run

    write_jsonl(tmp_path / "sft.jsonl", synthetic_sft(8, seed=0))
    cfg = SFTConfig(model=str(tiny_model), train_file=str(tmp_path / "sft.jsonl"), out_dir=str(tmp_path / "sft"),
                    max_length=64, max_steps=4, per_device_train_batch_size=2, logging_steps=1,
                    report_to="none", launcher="none")  # fmt: skip
    capfd.readouterr()
    run(cfg)
    out, err = capfd.readouterr()
    losses = [h["loss"] for h in read_jsonl(tmp_path / "sft" / "log_history.jsonl") if "loss" in h]
    assert len(losses) == 4
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == [
        "1/4",
        "2/4",
        "3/4",
        "4/4",
    ]
    assert "done: 4 steps in" in out and out.rstrip().endswith(f"loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    assert "'loss'" not in out + err and "4/4 [" in err  # no dict per step; the bar is there
