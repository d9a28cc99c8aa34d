"""Papermill on nodes: `tulu-kit run --hosts` runs the notebooks here and each training cell on every node.

Two "nodes" on this machine (TULU_KIT_REMOTE=local, host 127.0.0.1 twice, gloo): the recipe goes through the
same path as `sbatch --nodes=2 recipes/slurm/run.sbatch` (papermill -> notebook -> launch -> one launcher per
node), and both ranks must end with identical weights, the executed notebook holding the stage's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from tulu_kit.config import REPO_ROOT, ConfigError, load_recipe
from tulu_kit.io import write_jsonl

# the sft stage's entry point, with a callback that dumps each rank's final weights (as in test_launch)
ENTRY = """
import os, sys
from pathlib import Path
import torch
from transformers import TrainerCallback

class DumpWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        torch.save(flat, Path(args.output_dir).parent / f"weights_rank{os.environ['RANK']}.pt")

from tulu_kit import sft
sys.exit(sft.main(sys.argv[1:], callbacks=[DumpWeights()]))
"""

CELL = """\
from tulu_kit import launch, training
from tulu_kit.config import collect, to_dict
from tulu_kit.sft import SFTConfig

cfg = collect(SFTConfig, globals())
launch.launch({entry!r}, to_dict(cfg), cfg.out_dir, **training.launch_args(cfg))
print(f"trained on {{cfg.num_machines}} nodes x {{cfg.num_processes // cfg.num_machines}} processes")
"""


def _recipe(tmp_path: Path, tiny_model: Path, port: int) -> Path:
    from tulu_kit.data.synthetic import synthetic_sft

    mix = write_jsonl(tmp_path / "sft.jsonl", synthetic_sft(64, seed=0))
    (tmp_path / "entry.py").write_text(ENTRY)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("# parameters", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(CELL.format(entry=str(tmp_path / "entry.py"))),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "train.ipynb")
    stage = dict(kind="sft", notebook=str(tmp_path / "train.ipynb"), model=str(tiny_model), train_file=str(mix),
                 max_length=128, max_steps=4, learning_rate=1e-3, warmup_ratio=0.0, per_device_train_batch_size=4,
                 gradient_accumulation_steps=2, report_to="none", launcher="accelerate", main_process_port=port)  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "nodes", "stages": {"sft": stage}}))
    return path


@pytest.mark.distributed
def test_a_recipe_on_two_nodes_runs_its_notebook_here_and_trains_on_both(tiny_model, tmp_path):
    recipe, run_dir = _recipe(tmp_path, tiny_model, 29641), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TULU_KIT_REMOTE": "local"}
    result = subprocess.run(
        [sys.executable, "-m", "tulu_kit.cli", "run", str(recipe), "--out", str(run_dir),
         "--hosts", "127.0.0.1,127.0.0.1", "--gpus-per-node", "1"],  # fmt: skip
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["stages"]["sft"]
    assert (resolved["num_machines"], resolved["num_processes"], resolved["main_process_ip"]) == (
        2,
        2,
        "127.0.0.1",
    )
    assert resolved["gradient_accumulation_steps"] == 1  # 4 x 2 x 1 = 4 x 1 x 2: the effective batch is kept
    out = run_dir / "sft"
    rank0, rank1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    assert (out / "launch" / "node0" / "train.log").is_file() and (
        out / "launch" / "node1" / "train.log"
    ).is_file()
    executed = nbformat.read(run_dir / "notebooks" / "train.ipynb", as_version=4)
    text = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "trained on 2 nodes x 1 processes" in text


def test_an_effective_batch_that_cannot_be_kept_on_the_nodes_stops_naming_it(tiny_model, tmp_path):
    recipe = _recipe(tmp_path, tiny_model, 29642)
    with pytest.raises(ConfigError, match="effective batch 8 .* cannot be kept on 3 processes"):
        load_recipe(recipe, run_dir=tmp_path / "run", hosts=["a", "b", "c"])
