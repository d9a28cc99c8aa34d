"""Fault injection: kills mid-save, mid-rotation and mid-publish, another run's checkpoints, concurrent writers,
two runs into one folder, a killed log writer. Every case asserts what survives, not just that nothing raised.

A kill is real: the faulty code runs in a forked child that SIGKILLs itself at the injected point (no ``finally``
runs, no buffer is flushed), and the parent then looks at the files it left. The Trainer's save sequence is
replayed by hand (``on_step_end`` with a save due, the checkpoint files, ``on_save``) so that each kill point can
be reached exactly; the sft tests cover the same callback inside a real Trainer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tulu_kit import checkpoints
from tulu_kit.io import atomic_dir

RUN = {
    "model": "m",
    "learning_rate": 1e-4,
    "max_steps": 8,
    "num_processes": 1,
    "save_steps": 2,
    "resume": False,
}
FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def killed_in_child(fn) -> bool:
    """Run ``fn`` in a forked child; True when it died by SIGKILL (the injected kill point was reached)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def save(cb, folder: Path, step: int, tag: str, kill_after_file: int | None = None) -> None:
    """What the Trainer does at a save step: on_step_end (save due), write the checkpoint, on_save."""
    args = SimpleNamespace(output_dir=str(folder))
    state = SimpleNamespace(global_step=step, is_world_process_zero=True)
    control = SimpleNamespace(should_save=True)
    cb.on_step_end(args, state, control)
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(FILES):
        (ckpt / name).write_text(f"{tag}:{step}")
        if kill_after_file == i:
            _kill()
    cb.on_save(args, state, control)


def train_begin(cb, folder: Path, step: int = 0) -> None:
    cb.on_train_begin(SimpleNamespace(output_dir=str(folder)), SimpleNamespace(global_step=step), None)


def assert_whole(ckpt: Path, tag: str, step: int) -> None:
    """Every file of the checkpoint was written by run ``tag`` at ``step``: no mix of runs or steps."""
    assert ckpt.name == f"checkpoint-{step}"
    assert {p.name for p in ckpt.iterdir()} >= {*FILES, checkpoints.COMPLETE, checkpoints.CONFIG_NAME}
    assert {(ckpt / n).read_text() for n in FILES} == {f"{tag}:{step}"}


def callback(config=RUN, limit=None):
    return checkpoints.complete_checkpoint_callback(config, limit)


# --------------------------------------------------------------------------- resume is the same run


def test_another_runs_checkpoint_is_an_error_naming_folder_and_keys(tmp_path):
    cb = callback()
    train_begin(cb, tmp_path)
    save(cb, tmp_path, 2, "a")
    other = {**RUN, "learning_rate": 3e-4, "max_steps": 16}
    with pytest.raises(checkpoints.CheckpointMismatch) as err:
        checkpoints.last_complete_checkpoint(tmp_path, other)
    msg = str(err.value)
    assert str(tmp_path / "checkpoint-2") in msg and "another out_dir" in msg and f"delete {tmp_path}" in msg
    differing = msg.split("differs in:\n")[1].split("\nResuming")[0].splitlines()
    assert [line.strip() for line in differing] == [
        "learning_rate: 0.0001 in the checkpoint, 0.0003 now",
        "max_steps: 8 in the checkpoint, 16 now",
    ]


def test_same_run_resumes_with_only_logging_saving_and_launch_fields_changed(tmp_path):
    cb = callback()
    save(cb, tmp_path, 2, "a")
    changed = {**RUN, "resume": True, "save_steps": 5, "logging_steps": 9, "report_to": "none",
               "main_process_port": 1234, "out_dir": "/moved"}  # fmt: skip
    assert checkpoints.last_complete_checkpoint(tmp_path, changed) == tmp_path / "checkpoint-2"
    assert checkpoints.last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # no config: no check


def test_world_size_is_part_of_the_run(tmp_path):
    save(callback(), tmp_path, 2, "a")
    with pytest.raises(checkpoints.CheckpointMismatch, match="num_processes: 1 in the checkpoint, 4 now"):
        checkpoints.last_complete_checkpoint(tmp_path, {**RUN, "num_processes": 4})


def test_a_marked_checkpoint_without_its_config_is_not_trusted(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / checkpoints.COMPLETE).write_text("{}")  # written by an older tulu-kit
    with pytest.raises(checkpoints.CheckpointMismatch, match="cannot be told to be this run's"):
        checkpoints.last_complete_checkpoint(tmp_path, RUN)


def test_fresh_run_removes_checkpoints_left_by_another_run(tmp_path):
    save(callback(), tmp_path, 2, "old")
    save(callback(), tmp_path, 4, "old")
    new = {**RUN, "learning_rate": 9e-4}
    cb = callback(new)
    train_begin(cb, tmp_path)  # resume off: step 0
    assert list(tmp_path.iterdir()) == []
    save(cb, tmp_path, 2, "new")
    assert_whole(checkpoints.last_complete_checkpoint(tmp_path, new), "new", 2)


@pytest.mark.parametrize("kill_after_file", [0, 1, 2])
def test_rewritten_checkpoint_killed_mid_save_keeps_no_old_marker(tmp_path, kill_after_file):
    """An older run's complete checkpoint-4 is being rewritten (say a resumed run whose fresh start was skipped);
    the kill comes after some of the new files: checkpoint-4 must not look complete."""
    save(callback(), tmp_path, 2, "a")
    save(callback(), tmp_path, 4, "old")
    assert killed_in_child(lambda: save(callback(), tmp_path, 4, "a", kill_after_file=kill_after_file))
    assert not (tmp_path / "checkpoint-4" / checkpoints.COMPLETE).exists()
    assert_whole(checkpoints.last_complete_checkpoint(tmp_path, RUN), "a", 2)


def test_kill_between_config_and_marker_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    cb = callback()
    save(cb, tmp_path, 2, "a")

    def write_marker_then_die(path, text):
        if Path(path).name == checkpoints.COMPLETE:
            _kill()

    def go():
        monkeypatch.setattr(checkpoints, "atomic_write_text", write_marker_then_die)
        save(cb, tmp_path, 4, "a")

    assert killed_in_child(go)
    assert (tmp_path / "checkpoint-4" / checkpoints.CONFIG_NAME).is_file()
    assert_whole(checkpoints.last_complete_checkpoint(tmp_path, RUN), "a", 2)


# --------------------------------------------------------------------------- rotation


def test_rotation_keeps_the_limit_newest_complete_ones(tmp_path):
    cb = callback(limit=2)
    (tmp_path / "checkpoint-1").mkdir(parents=True)  # incomplete leftover: rotated away first
    for step in (2, 4, 6):
        save(cb, tmp_path, step, "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]
    one = tmp_path / "one"
    for step in (2, 4):
        save(callback(limit=1), one, step, "a")
    assert [p.name for p in one.iterdir()] == ["checkpoint-4"]


ROTATION_KILLS = ["before-marker", "before-rename", "after-rename", "mid-delete"]


@pytest.mark.parametrize("point", ROTATION_KILLS)
def test_kill_during_rotation_with_limit_one_leaves_a_complete_checkpoint(tmp_path, monkeypatch, point):
    cb = callback(limit=1)
    save(cb, tmp_path, 2, "a")
    real_replace, real_rmtree, real_write = (
        os.replace,
        checkpoints.shutil.rmtree,
        checkpoints.atomic_write_text,
    )

    def write(path, text):
        if point == "before-marker" and Path(path).name == checkpoints.COMPLETE:
            _kill()
        return real_write(path, text)

    def replace(src, dst):
        if point == "before-rename" and ".deleting-" in str(dst):
            _kill()
        real_replace(src, dst)
        if point == "after-rename" and ".deleting-" in str(dst):
            _kill()

    def rmtree(path, ignore_errors=False):
        path = Path(path)
        if point == "mid-delete" and path.name.startswith(".deleting-") and path.exists():
            next(iter(sorted(path.iterdir()))).unlink()  # some files gone, then the kill
            _kill()
        real_rmtree(path, ignore_errors=ignore_errors)

    def go():
        monkeypatch.setattr(checkpoints, "atomic_write_text", write)
        monkeypatch.setattr(checkpoints.os, "replace", replace)
        monkeypatch.setattr(checkpoints.shutil, "rmtree", rmtree)
        save(cb, tmp_path, 4, "a")

    assert killed_in_child(go)
    found = checkpoints.last_complete_checkpoint(tmp_path, RUN)
    assert found is not None
    assert_whole(found, "a", 2 if point == "before-marker" else 4)
    # the next save of the resumed run cleans whatever the kill left behind
    save(cb, tmp_path, 6, "a")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-6"]


# --------------------------------------------------------------------------- atomic_dir


def _fill(folder: Path, tag: str, n: int = 40) -> None:
    for i in range(n):
        (folder / f"shard-{i:03d}").write_text(tag)
        if i % 8 == 0:
            time.sleep(0)  # let the other writer interleave


def test_two_concurrent_writers_publish_one_whole_result(tmp_path, rounds=25):
    target = tmp_path / "model"
    for r in range(rounds):
        barrier = threading.Barrier(2)
        errors = []

        def writer(tag, r=r, barrier=barrier, errors=errors):
            try:
                barrier.wait()
                with atomic_dir(target) as tmp:
                    _fill(tmp, f"{tag}{r}")
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(t,)) for t in "AB"]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors
        tags = {p.read_text() for p in target.iterdir()}
        assert tags in ({f"A{r}"}, {f"B{r}"}) and len(list(target.iterdir())) == 40
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_two_writer_processes_publish_one_whole_result(tmp_path):
    target = tmp_path / "model"
    code = (
        "import sys; from pathlib import Path; from tulu_kit.io import atomic_dir\n"
        "for r in range(15):\n"
        "    with atomic_dir(sys.argv[1]) as tmp:\n"
        "        [(tmp / f'shard-{i:03d}').write_text(sys.argv[2]) for i in range(40)]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), t], env=env) for t in "AB"]
    assert [p.wait() for p in procs] == [0, 0]
    assert {p.read_text() for p in target.iterdir()} in ({"A"}, {"B"})
    assert len(list(target.iterdir())) == 40 and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_collective_atomic_dir_gives_every_rank_the_token_path(tmp_path):
    with atomic_dir(tmp_path / "m", is_main=False, token="run7") as tmp:  # a non-main rank: creates nothing
        assert tmp == tmp_path / ".m.tmp-run7" and not tmp.exists()
    with atomic_dir(tmp_path / "m", True, token="run7") as tmp:
        assert tmp == tmp_path / ".m.tmp-run7"
        (tmp / "w").write_text("1")
    assert (tmp_path / "m" / "w").read_text() == "1"


RANK = """
import os, sys
from pathlib import Path
import torch.distributed as dist
from tulu_kit.io import atomic_dir
dist.init_process_group("gloo")
rank = dist.get_rank()
for round in range(3):
    with atomic_dir(sys.argv[1], rank == 0) as tmp:  # how sft, dpo and reward save: every rank, one folder
        print(round, tmp, flush=True)
        dist.barrier()  # rank 0 has created it
        (tmp / f"part-{rank}").write_text(str(round))  # under ZeRO-3 every rank contributes to one save
        dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.distributed
def test_collective_atomic_dir_puts_every_rank_in_one_fresh_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631"}  # fmt: skip
    target = tmp_path / "model"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(target)],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120)[0].split("\n") for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0]
    assert outs[0] == outs[1]  # the same temporary path on both ranks, every round
    assert len({line.split()[1] for line in outs[0] if line}) == 3  # and a fresh one each round
    assert {p.name: p.read_text() for p in target.iterdir()} == {"part-0": "2", "part-1": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize("point", ["mid-write", "between-renames"])
def test_killed_writer_leaves_the_old_output_and_the_next_write_cleans_up(tmp_path, monkeypatch, point):
    import tulu_kit.io as io

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        _fill(tmp, "old")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            _kill()  # the old output moved aside, the new one not yet in place

    def go():
        monkeypatch.setattr(io.os, "replace", replace)
        with atomic_dir(target) as tmp:
            _fill(tmp, "new", n=20)
            if point == "mid-write":
                _kill()

    assert killed_in_child(go)
    if point == "mid-write":
        assert {p.read_text() for p in target.iterdir()} == {"old"} and len(list(target.iterdir())) == 40
    with atomic_dir(target) as tmp:  # the next writer removes what the dead one left (or restores it)
        _fill(tmp, "next")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert {p.read_text() for p in target.iterdir()} == {"next"}


def test_killed_publisher_is_repaired_before_anyone_reads(tmp_path, monkeypatch):
    """Killed between moving the old output aside and renaming the new one in: the next write puts it back."""
    import tulu_kit.io as io

    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        _fill(tmp, "old")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            _kill()

    def go():
        monkeypatch.setattr(io.os, "replace", replace)
        with atomic_dir(target) as tmp:
            _fill(tmp, "new")

    assert killed_in_child(go) and not target.exists()
    assert io.recover_dir(target) and {p.read_text() for p in target.iterdir()} == {"old"}


# --------------------------------------------------------------------------- one run per folder, the log


def test_second_run_into_a_held_folder_fails_at_once_naming_folder_and_pid(tmp_path, capsys):
    from tulu_kit.config import Recipe
    from tulu_kit.run import run_recipe

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tulu_kit.run import lock_run_dir\n"
         "with lock_run_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        recipe = Recipe("t", 0, run_dir, [], "r.yaml")
        assert run_recipe(recipe) == 2
        err = capsys.readouterr().err
        assert f"{run_dir} is in use by another tulu-kit run (pid {holder.pid}" in err
        assert not (run_dir / "run.json").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file stays, and does not block
    assert (run_dir / ".lock").is_file()
    assert run_recipe(Recipe("t", 0, run_dir, [], "r.yaml")) == 0
    assert (run_dir / "run.json").is_file()


LOGGER = """
import sys
from tulu_kit import launch
child = "import os, sys, time; print('child', os.getpid(), flush=True); print('step 1 loss 2.5', flush=True); " \\
        "sys.stdout.write('50%|#####\\\\r'); sys.stdout.flush(); time.sleep(60)"
launch.stream([sys.executable, "-c", child], sys.argv[1])
"""


def test_train_log_holds_the_output_when_the_launcher_is_killed(tmp_path):
    log = tmp_path / "train.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", LOGGER, str(log)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    try:
        child_pid = int(parent.stdout.readline().split()[1])
        assert parent.stdout.readline().strip() == "step 1 loss 2.5"
        deadline = time.monotonic() + 30
        while b"50%|#####\r" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)  # the notebook kernel dies: nothing is flushed on the way out
        parent.wait()
    finally:
        parent.kill()
        os.killpg(child_pid, signal.SIGKILL)  # the job runs in its own session
    text = log.read_bytes()  # bytes: read_text would turn the progress bar's \r into \n
    assert b"step 1 loss 2.5\n" in text and text.endswith(b"50%|#####\r")


# --------------------------------------------------------------------------- inside a real Trainer


def _trainer(model_dir: Path, out: Path, config: dict, limit: int, max_steps: int = 6):
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    rows = [{"input_ids": [1 + (i * 7 + j) % 50 for j in range(12)]} for i in range(16)]
    rows = [{**r, "labels": r["input_ids"]} for r in rows]
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        learning_rate=config["learning_rate"],
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )  # fmt: skip  (no save_total_limit: rotation is the callback's)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return Trainer(model=model, args=args, train_dataset=rows,
                   callbacks=[checkpoints.complete_checkpoint_callback(config, limit)])  # fmt: skip


def test_real_trainer_marks_rotates_and_refuses_another_run(tiny_model, tmp_path):
    out = tmp_path / "checkpoints"
    _trainer(tiny_model, out, RUN, limit=1).train()
    assert [p.name for p in out.iterdir()] == ["checkpoint-6"]  # 2 and 4 rotated away once 6 was marked
    assert checkpoints.last_complete_checkpoint(out, RUN) == out / "checkpoint-6"
    with pytest.raises(
        checkpoints.CheckpointMismatch, match="learning_rate: 0.0001 in the checkpoint, 0.001 now"
    ):
        checkpoints.last_complete_checkpoint(out, {**RUN, "learning_rate": 1e-3})
    # resume off: a fresh run into the folder starts by removing the other run's checkpoints
    other = {**RUN, "learning_rate": 1e-3}
    trainer = _trainer(tiny_model, out, other, limit=2, max_steps=4)
    trainer.train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert checkpoints.last_complete_checkpoint(out, other) == out / "checkpoint-4"


def test_a_finished_runs_last_checkpoint_is_loaded_not_trained_past(tiny_model, tmp_path):
    """Killed while writing the final model, a run resumes from its last checkpoint, the run's last step: the
    Trainer's own resume would train one step past max_steps there (the run ends mid-epoch); the kit loads it."""
    import torch

    from tulu_kit import trainers

    out = tmp_path / "checkpoints"
    first = _trainer(tiny_model, out, RUN, limit=2)
    first.train()
    last = checkpoints.last_complete_checkpoint(out, RUN)
    assert last == out / "checkpoint-6" and trainers.is_finished(last)
    assert not trainers.is_finished(out / "checkpoint-4")
    plain = _trainer(tiny_model, tmp_path / "plain", RUN, limit=2)
    plain.train(resume_from_checkpoint=str(last))
    assert plain.state.global_step == 7  # what the kit avoids
    loaded = _trainer(tiny_model, tmp_path / "loaded", RUN, limit=2)
    trainers.load_finished_checkpoint(loaded, last)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (first, loaded)]
    assert loaded.state.global_step == 6 and losses[0] == losses[1] and len(losses[1]) == 6
    a, b = first.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
