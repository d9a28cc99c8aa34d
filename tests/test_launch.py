"""Launching: command lines, streamed logs and exit codes, checkpoint markers, and real 2-process CPU runs.

The 2-process runs train the sft stage on the quickstart mix with plain DDP (accelerate ``--multi_gpu`` and
torchrun, gloo) and with DeepSpeed ZeRO-3 (gloo); each rank dumps its final weights (gathered under ZeRO-3), and
the test checks that the ranks agree exactly, that the saved model is those weights, and that the loss fell.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tulu_kit import checkpoints, launch, training
from tulu_kit.config import to_dict
from tulu_kit.io import read_jsonl, write_jsonl
from tulu_kit.results import read_result
from tulu_kit.sft import SFTConfig

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- commands


def test_two_cpu_processes_never_use_the_single_process_cpu_launcher():
    cmd = launch.build_command("tulu_kit.sft", "c.yaml", num_processes=2)
    assert "--multi_gpu" in cmd and "--cpu" not in cmd and "--num_processes=2" in cmd
    assert cmd[-3:] == ["-m", "tulu_kit.sft", "c.yaml"]
    assert "--multi_gpu" not in launch.build_command("tulu_kit.sft", "c.yaml", num_processes=1)


def test_deepspeed_and_multi_node_commands():
    cmd = launch.build_command(
        "tulu_kit.dpo", "c.yaml", num_processes=16, deepspeed="zero3.json", num_machines=2, machine_rank=1,
        main_process_ip="10.0.0.1",
    )  # fmt: skip
    for arg in ("--use_deepspeed", "--deepspeed_config_file=zero3.json", "--num_machines=2", "--machine_rank=1",
                "--main_process_ip=10.0.0.1", "--deepspeed_multinode_launcher=standard"):  # fmt: skip
        assert arg in cmd
    assert "--multi_gpu" not in cmd
    torchrun = launch.build_command("x.py", "c.yaml", launcher="torchrun", num_processes=8, num_machines=2,
                                    main_process_ip="h0")  # fmt: skip
    assert (
        "--nproc_per_node=4" in torchrun and "--nnodes=2" in torchrun and torchrun[-2:] == ["x.py", "c.yaml"]
    )
    with pytest.raises(ValueError, match="main_process_ip"):
        launch.build_command("tulu_kit.sft", "c.yaml", num_processes=2, num_machines=2)


def test_stream_tees_output_and_raises_with_the_tail_on_failure(tmp_path, capsys):
    log = tmp_path / "log.txt"
    launch.stream([sys.executable, "-c", "print('hello'); print('world')"], log)
    assert "hello\nworld" in capsys.readouterr().out and "world" in log.read_text()
    code = "import sys; print('step 1'); print('boom: bad row 7', file=sys.stderr); sys.exit(3)"
    with pytest.raises(launch.LaunchError, match="code 3") as err:
        launch.stream([sys.executable, "-c", code], log)
    assert "boom: bad row 7" in str(err.value) and str(log) in str(err.value)


def _first_line_of_failure(code: str, log: Path) -> str:
    with pytest.raises(launch.LaunchError) as err:
        launch.stream([sys.executable, "-c", code], log)
    return str(err.value).splitlines()[0]


def test_a_failed_launch_says_the_root_cause_first(tmp_path):
    # rank 0's traceback, then the launcher's own (accelerate ends in CalledProcessError): the first line is rank 0's
    code = (
        "import subprocess, sys\n"
        "print('Traceback (most recent call last):')\n"
        "print('[rank0]: FileNotFoundError: data/sft.jsonl: no such file')\n"
        "raise subprocess.CalledProcessError(1, ['python', '-m', 'tulu_kit.sft'])\n"
    )
    log = tmp_path / "launch" / "train.log"
    assert _first_line_of_failure(code, log) == "FileNotFoundError: data/sft.jsonl: no such file"
    full = "print('RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4304'); exit(1)"
    first = _first_line_of_failure(full, log)
    assert first.startswith(f"disk full while writing under {tmp_path} (") and "GB free there now" in first
    # a rank killed by SIGABRT from C++ (a gloo or c10d exception) prints no Python traceback
    abort = (
        "import os, sys\n"
        "print('step 3', flush=True)\n"
        "print(\"terminate called after throwing an instance of 'gloo::IoException'\", file=sys.stderr)\n"
        "print('  what():  Read error [127.0.0.1]:41234: Connection reset by peer', file=sys.stderr, flush=True)\n"
        "os.abort()\n"
    )
    assert _first_line_of_failure(abort, log) == (
        "terminate called after throwing an instance of 'gloo::IoException'; "
        "what():  Read error [127.0.0.1]:41234: Connection reset by peer"
    )


def test_a_missing_model_stops_before_launching(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    launch_calls = []
    monkeypatch.setattr(launch, "stream", lambda *a, **k: launch_calls.append(a))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        launch.launch("tulu_kit.sft", {"model": str(tmp_path / "nothere")}, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        launch.launch("tulu_kit.sft", {"model": str(tmp_path / "empty")}, tmp_path / "o")
    from tulu_kit.models import hub_reachable

    hub_reachable.cache_clear()
    with pytest.raises(FileNotFoundError, match="not a local folder, and the Hub is unreachable"):
        launch.launch("tulu_kit.sft", {"model": "nobody/nothere-model"}, tmp_path / "o")
    hub_reachable.cache_clear()
    assert not launch_calls


def test_last_complete_checkpoint_skips_unmarked_ones(tmp_path):
    assert checkpoints.last_complete_checkpoint(tmp_path / "missing") is None
    for step in (2, 10, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / checkpoints.COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-10" / checkpoints.COMPLETE).write_text("{}")  # 10 > 2 numerically, not as text
    assert checkpoints.last_complete_checkpoint(tmp_path).name == "checkpoint-10"


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with launch.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), launch.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "a.txt").read_text() == "1"  # the old model is untouched


# --------------------------------------------------------------------------- real 2-process runs

ENTRY = """
import contextlib, os, sys
from pathlib import Path
import torch
from transformers import TrainerCallback

class DumpWeights(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = list(model.parameters())
        gather = contextlib.nullcontext()
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
            import deepspeed
            gather = deepspeed.zero.GatheredParameters(params)
        with gather:
            flat = torch.cat([p.detach().float().flatten().clone() for p in params])
        torch.save(flat, Path(args.output_dir).parent / f"weights_rank{os.environ['RANK']}.pt")

import importlib
stage = importlib.import_module("tulu_kit." + os.environ.get("TEST_STAGE", "sft"))
sys.exit(stage.main(sys.argv[1:], callbacks=[DumpWeights()]))
"""


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    from tulu_kit.data.synthetic import synthetic_sft

    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", synthetic_sft(64, seed=0))


@pytest.mark.distributed
@pytest.mark.parametrize(
    "launcher,deepspeed,port",
    [
        ("accelerate", "", 29611),
        ("torchrun", "", 29612),
        ("accelerate", "recipes/deepspeed/zero3.json", 29613),
    ],
    ids=["ddp-accelerate", "ddp-torchrun", "zero3-accelerate"],
)
def test_two_processes_agree_and_lower_the_loss(tiny_model, tmp_path, mix, launcher, deepspeed, port):
    from transformers import AutoModelForCausalLM

    cfg = SFTConfig(
        model=str(tiny_model), train_file=str(mix), out_dir=str(tmp_path / "sft"), max_length=128, max_steps=8,
        learning_rate=3e-3, warmup_ratio=0.0, per_device_train_batch_size=4, report_to="none",
        launcher=launcher, num_processes=2, deepspeed=deepspeed, main_process_port=port,
    )  # fmt: skip
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    launch.launch(
        str(entry), to_dict(cfg), cfg.out_dir, launcher=launcher, num_processes=2,
        deepspeed=str(REPO / deepspeed) if deepspeed else "", main_process_port=cfg.main_process_port,
    )  # fmt: skip
    result = read_result(cfg.out_dir)
    assert result["world_size"] == 2 and result["train_steps"] == 8
    nll = [h["nll"] for h in read_jsonl(Path(cfg.out_dir) / "log_history.jsonl") if "nll" in h]
    assert sum(nll[-3:]) / 3 < sum(nll[:3]) / 3 - 0.2, nll
    rank0, rank1 = (torch.load(Path(cfg.out_dir) / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    saved = AutoModelForCausalLM.from_pretrained(result["model_dir"])
    torch.testing.assert_close(torch.cat([p.flatten() for p in saved.parameters()]), rank0, rtol=0, atol=0)


# --------------------------------------------------------------------------- two "nodes" on this machine


@pytest.mark.distributed
@pytest.mark.parametrize("stage,port", [("sft", 29621), ("dpo", 29622)])
def test_two_nodes_started_separately_end_with_identical_weights(tiny_model, tmp_path, mix, stage, port):
    """Each node runs the per-node command of the README (its own machine_rank) as a separate process."""
    import os
    import subprocess

    from tulu_kit.data.synthetic import synthetic_preference
    from tulu_kit.dpo import DPOConfig

    common = dict(model=str(tiny_model), out_dir=str(tmp_path / stage), max_steps=4, learning_rate=1e-3,
                  warmup_ratio=0.0, per_device_train_batch_size=4, report_to="none", launcher="accelerate",
                  num_processes=2, num_machines=2, main_process_ip="127.0.0.1", main_process_port=port)  # fmt: skip
    if stage == "sft":
        cfg = SFTConfig(train_file=str(mix), max_length=128, **common)
    else:
        pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_preference(40, seed=1))
        cfg = DPOConfig(train_file=str(pairs), max_length=96, eval_fraction=0.2, **common)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = {**launch.child_env({"TEST_STAGE": stage}), "PYTHONPATH": str(REPO)}
    nodes = []
    for rank in (0, 1):  # two separately started launchers, as on two machines
        args = {**training.launch_args(cfg), "machine_rank": rank}
        code = f"from tulu_kit import launch; launch.launch({str(entry)!r}, {to_dict(cfg)!r}, {cfg.out_dir!r}, **{args!r})"
        nodes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    result = read_result(cfg.out_dir)
    assert result["world_size"] == 2 and result["train_steps"] == 4
    rank0, rank1 = (torch.load(Path(cfg.out_dir) / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    base = torch.cat([p.detach().flatten() for p in _load(tiny_model).parameters()])
    assert not torch.equal(rank0, base)  # they trained, and agree
    assert (Path(cfg.out_dir) / "launch" / "node1" / "train.log").is_file()
    assert os.path.isdir(result["model_dir"])


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)
