"""A headless stage is quiet: kernel over IPC, its own log in a file, progress bars throttled in the kernel only."""

from __future__ import annotations

import os

import nbformat

from tulu_kit.config import load_recipe
from tulu_kit.run import QUIET_ENV, run_recipe

BODY = """\
import json, os, sys
from pathlib import Path
Path(out_dir).mkdir(parents=True, exist_ok=True)
env = {k: os.environ.get(k) for k in ("TQDM_MININTERVAL", "HF_HUB_DISABLE_PROGRESS_BARS")}
conn = json.loads(Path(get_ipython().kernel.config["IPKernelApp"]["connection_file"]).read_text())
(Path(out_dir) / "kernel.json").write_text(json.dumps({**env, "transport": conn["transport"]}))
"""


def test_stage_kernel_is_quiet_and_named_like_its_notebook(tmp_path):
    import json

    nb = nbformat.v4.new_notebook()
    params = 'out_dir = "x"\nrun_dir = "r"\nreference = ""\ncompare = []'
    nb.cells = [
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(BODY),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "probe.ipynb")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nstages:\n  probe: {{kind: report, notebook: {tmp_path / 'probe.ipynb'}}}\n")
    assert run_recipe(load_recipe(recipe, run_dir=tmp_path / "run")) == 0
    seen = json.loads((tmp_path / "run" / "probe" / "kernel.json").read_text())
    assert seen == {"TQDM_MININTERVAL": "30", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "transport": "ipc"}
    assert (
        "TQDM_MININTERVAL" not in os.environ
        or os.environ["TQDM_MININTERVAL"] != QUIET_ENV["TQDM_MININTERVAL"]
    )
    assert (tmp_path / "run" / "notebooks" / "probe.ipynb").is_file()  # the notebook's own name


def test_shutting_a_finished_kernel_down_sends_it_no_interrupt(tmp_path):
    import asyncio
    import types

    from tulu_kit.run import stage_kernel_manager

    signals = []
    manager = stage_kernel_manager(tmp_path / "k.log", tmp_path)(kernel_name="python3")

    async def record(signum):
        signals.append(signum)

    manager._async_signal_kernel = record
    manager.kernel_spec  # noqa: B018  (loaded, so the base class would signal)
    manager.provisioner = types.SimpleNamespace(has_process=True)  # "has a kernel"
    manager.shutting_down = True
    asyncio.run(manager._async_interrupt_kernel())
    assert signals == []  # the shutdown's courtesy SIGINT left an "KeyboardInterrupt caught" log behind
    manager.shutting_down = False
    asyncio.run(manager._async_interrupt_kernel())
    assert signals  # a real interrupt (a cell over its time) still goes through
