"""The runner: stages in order, failures stop the run loudly, completed stages are skipped on a re-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tulu_kit.config import load_recipe
from tulu_kit.run import run_recipe

PARAMS = "\n".join(
    [
        'out_dir = "x"',
        "seed = 0",
        "hidden_size = 64",
        "num_layers = 2",
        "num_heads = 4",
        "vocab_size = 1024",
        'prompt = "ok"',
        "max_new_tokens = 1",
    ]
)
BODY = """\
from pathlib import Path
Path(out_dir).mkdir(parents=True, exist_ok=True)
with open(Path(out_dir) / "executions.txt", "a") as f:
    f.write("x")
if prompt == "fail":
    raise ValueError("boom " + prompt)
"""


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(BODY),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _recipe(tmp_path: Path) -> Path:
    nb = _notebook(tmp_path / "stage.ipynb")
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nstages:\n  first: {{kind: quickstart, notebook: {nb}}}\n"
        f"  second: {{kind: quickstart, notebook: {nb}, prompt: fail}}\n"
        f"  third: {{kind: quickstart, notebook: {nb}}}\n"
    )
    return path


def _executions(run_dir: Path, stage: str) -> int:
    return len((run_dir / stage / "executions.txt").read_text())


def test_failure_stops_then_rerun_skips_completed_then_force(tmp_path, capsys):
    recipe_path, run_dir = _recipe(tmp_path), tmp_path / "run"

    assert run_recipe(load_recipe(recipe_path, run_dir=run_dir)) == 1
    err = capsys.readouterr().err
    assert "stage 'second' failed: ValueError: boom fail\n" in err  # the root cause, first
    assert 'raise ValueError("boom " + prompt)' in err
    assert "ValueError: boom fail" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["failed_stage"] == "second"
    assert (
        status["stages"]["first"]["status"] == "completed"
        and status["stages"]["second"]["status"] == "failed"
    )
    # both stages run one notebook: the executed copies keep its name, plus the stage's
    partial = nbformat.read(run_dir / "notebooks" / "stage.second.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in partial.cells for o in c.get("outputs", []))
    assert (run_dir / "config.yaml").is_file()

    # fixed: second now reads first's folder (a prompt that names it), third reads nothing
    fixed = load_recipe(recipe_path, ["second.prompt=${run_dir}/first/model"], run_dir=run_dir)
    assert run_recipe(fixed) == 0
    assert "[1/3] first: completed earlier" in capsys.readouterr().out
    counts = lambda: [_executions(run_dir, s) for s in ("first", "second", "third")]  # noqa: E731
    assert counts() == [1, 2, 1]

    assert run_recipe(fixed) == 0  # nothing changed: all skipped
    assert counts() == [1, 2, 1]
    skipped = json.loads((run_dir / "run.json").read_text())["stages"]["first"]
    marker = json.loads((run_dir / "first" / ".stage.json").read_text())
    assert skipped["status"] == "skipped" and skipped["seconds"] == marker["seconds"] > 0  # the earlier time

    changed = ["second.prompt=${run_dir}/first/model", "first.prompt=new"]
    changed_first = load_recipe(recipe_path, changed, run_dir=run_dir)
    assert run_recipe(changed_first) == 0  # first changed: second, which reads it, runs again; third does not
    assert counts() == [2, 3, 1]

    assert run_recipe(changed_first, force=True) == 0
    assert counts() == [3, 4, 2]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"

    # second fails again (its prompt "fail"): the run stops there, before third, which completed earlier
    capsys.readouterr()
    assert run_recipe(load_recipe(recipe_path, ["first.prompt=new"], run_dir=run_dir)) == 1
    assert "third" not in capsys.readouterr().out and counts() == [3, 5, 2]
    assert json.loads((run_dir / "run.json").read_text())["stages"]["third"]["status"] == "pending"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tulu_kit.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_help_explains_itself():
    top = _cli("--help")
    assert (
        top.returncode == 0 and "run" in top.stdout and "tulu-kit run recipes/quickstart.yaml" in top.stdout
    )
    run = _cli("run", "--help")
    assert run.returncode == 0
    for flag in ("--set", "--out", "--force", "--dry-run"):
        assert flag in run.stdout


def test_cli_misspelt_key_fails_fast_naming_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nstages:\n  quickstart:\n    hiden_size: 32\n")
    result = _cli("run", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert f"{path}: unknown key 'stages.quickstart.hiden_size' (did you mean" in result.stderr
    assert not (tmp_path / "run").exists()


def _start_run(recipe: Path, run_dir: Path) -> subprocess.Popen:
    """`tulu-kit run` in a process of its own, to be signalled."""
    cmd = [sys.executable, "-m", "tulu_kit.cli", "run", str(recipe), "--out", str(run_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_marks_the_run_interrupted_and_says_how_to_continue(tmp_path):
    import signal
    import time

    nb = _notebook(tmp_path / "stage.ipynb")
    nb_json = nbformat.read(nb, as_version=4)
    nb_json.cells.append(nbformat.v4.new_code_cell("import time\nif prompt == 'sleep':\n    time.sleep(120)"))
    nbformat.write(nb_json, nb)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nstages:\n  first: {{kind: quickstart, notebook: {nb}, prompt: sleep}}\n")
    run_dir = tmp_path / "run"
    proc = _start_run(recipe, run_dir)
    deadline = time.time() + 90
    while time.time() < deadline and not (run_dir / "first" / "executions.txt").exists():
        time.sleep(0.2)  # the stage's second cell has run: the kernel is in the sleeping cell
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "run the same command again" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and status["stages"]["first"]["status"] == "interrupted"


EVAL_BODY = """\
import os, time
from pathlib import Path
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "cwd").write_text(os.getcwd() + "\\n" + os.environ.get("OMP_NUM_THREADS", ""))
(out / "started").write_text(str(time.time()))
if subset == "fail":
    raise ValueError("boom " + out_dir)
if subset == "die":  # the kernel itself ends (as when killed for memory): no cell error to report
    os._exit(1)
if subset.startswith("with:"):  # runs only beside its sibling: one at a time, it would wait in vain and fail
    sibling = out.parent / subset[5:] / "started"
    deadline = time.time() + 60
    while not sibling.exists():
        assert time.time() < deadline, f"{sibling} never started"
        time.sleep(0.1)
    time.sleep(1.0)
if subset.startswith("after:"):  # ends only once the runner has recorded its sibling's failure
    import json
    run_json, deadline = out.parent / "run.json", time.time() + 60
    while json.loads(run_json.read_text()).get("stages", {}).get(subset[6:], {}).get("status") != "failed":
        assert time.time() < deadline, f"{subset[6:]} never failed"
        time.sleep(0.1)
if subset.startswith("nap:"):
    time.sleep(float(subset[4:]))
if subset == "sleep":
    time.sleep(120)
(out / "ended").write_text(str(time.time()))
"""


def _eval_recipe(tmp_path: Path, subsets: dict[str, str], jobs: int, reads: dict | None = None) -> Path:
    """Eval stages running EVAL_BODY with their ``subset``; ``reads``: stage -> the stage whose folder it names."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('out_dir = "x"\nsubset = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(EVAL_BODY),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "ev.ipynb")
    lines = [f"name: t\njobs: {jobs}\nstages:"]
    for name, subset in subsets.items():
        model = f", model: '${{run_dir}}/{reads[name]}'" if name in (reads or {}) else ""
        lines.append(
            f"  {name}: {{kind: eval_gsm8k, notebook: {tmp_path / 'ev.ipynb'}, subset: '{subset}'{model}}}"
        )
    path = tmp_path / "r.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jobs_run_stages_side_by_side_each_after_the_stages_it_reads(tmp_path, capsys):
    run_dir, here = tmp_path / "run", Path.cwd()
    stages = {"a": "with:b", "b": "with:a", "c": "", "d": "nap:8"}
    path = _eval_recipe(tmp_path, stages, jobs=4, reads={"c": "a"})
    recipe = load_recipe(path, run_dir=run_dir)
    assert recipe.resolved()["jobs"] == 4
    assert run_recipe(recipe) == 0  # a and b each waited for the other: they ran at once
    started = {s: float((run_dir / s / "started").read_text()) for s in "abcd"}
    ended = {s: float((run_dir / s / "ended").read_text()) for s in "abcd"}
    # c reads a's folder: it waited for a though a slot was free, and not for d, which reads nothing
    assert ended["a"] <= started["c"] < ended["d"]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and all(
        s["status"] == "completed" for s in status["stages"].values()
    )
    out = capsys.readouterr().out
    assert out.count(": running ") == 4 and out.count(": done in ") == 4
    assert run_recipe(recipe) == 0 and capsys.readouterr().out.count("skipped") == 4  # a re-run skips them
    # each kernel ran in its notebook's folder with its share of the cores; this process never changed folder
    import os

    cores = len(os.sched_getaffinity(0))
    for s in "abcd":
        assert (run_dir / s / "cwd").read_text().split("\n") == [str(tmp_path), str(max(1, cores // 4))]
    assert Path.cwd() == here
    # a changed: c, which reads it, runs again; b and d do not
    again = load_recipe(path, ["a.subset=x"], run_dir=run_dir)
    assert run_recipe(again) == 0
    out = capsys.readouterr().out
    assert "[2/4] b: completed earlier" in out and "[4/4] d: completed earlier" in out
    assert out.count(": running ") == 2
    assert float((run_dir / "c" / "started").read_text()) >= float((run_dir / "a" / "ended").read_text())


def test_a_stage_whose_input_ran_again_runs_even_after_a_run_that_failed_before_it(tmp_path):
    nb = _notebook(tmp_path / "stage.ipynb")
    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nstages:\n  a: {{kind: quickstart, notebook: {nb}}}\n"
        f"  m: {{kind: quickstart, notebook: {nb}}}\n"
        f"  b: {{kind: quickstart, notebook: {nb}, prompt: '${{run_dir}}/a/model'}}\n"
        f"  c: {{kind: quickstart, notebook: {nb}, prompt: '${{run_dir}}/b/model'}}\n"
    )
    run_dir = tmp_path / "run"
    counts = lambda: [_executions(run_dir, s) for s in "ambc"]  # noqa: E731
    assert run_recipe(load_recipe(path, run_dir=run_dir)) == 0 and counts() == [1, 1, 1, 1]
    # a changes and m, between a and its readers, fails: b and c never start
    assert run_recipe(load_recipe(path, ["a.prompt=new", "m.prompt=fail"], run_dir=run_dir)) == 1
    assert counts() == [2, 2, 1, 1]
    # m mended: a is skipped, but b (reads a) and c (reads b) were trained from the old a: they run again
    assert run_recipe(load_recipe(path, ["a.prompt=new"], run_dir=run_dir)) == 0
    assert counts() == [2, 3, 2, 2]


def test_a_dead_kernel_fails_its_stage_one_at_a_time_too(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_recipe(load_recipe(_eval_recipe(tmp_path, {"a": "die"}, 1), run_dir=run_dir)) == 1
    assert "stage 'a' failed: DeadKernelError" in capsys.readouterr().err
    status = json.loads((run_dir / "run.json").read_text())
    assert (status["status"], status["failed_stage"], status["stages"]["a"]["status"]) == (
        "failed",
        "a",
        "failed",
    )


@pytest.mark.parametrize("how,says", [("fail", "ValueError: boom"), ("die", "DeadKernelError")])
def test_a_failed_eval_stage_lets_the_running_one_finish_and_starts_no_more(tmp_path, capsys, how, says):
    run_dir = tmp_path / "run"
    recipe = load_recipe(_eval_recipe(tmp_path, {"a": "after:b", "b": how, "c": ""}, 2), run_dir=run_dir)
    assert run_recipe(recipe) == 1
    err = capsys.readouterr().err
    assert f"stage 'b' failed: {says}" in err and "waiting for 1 running stage(s) to end" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["failed_stage"] == "b"
    assert [status["stages"][s]["status"] for s in "abc"] == ["completed", "failed", "pending"]
    assert (run_dir / "a" / "ended").is_file() and not (run_dir / "c").exists()


def test_sigterm_interrupts_every_running_eval_stage(tmp_path):
    import signal
    import time

    recipe = _eval_recipe(tmp_path, {"a": "sleep", "b": "sleep", "c": ""}, jobs=2)
    run_dir = tmp_path / "run"
    proc = _start_run(recipe, run_dir)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not all((run_dir / s / "started").exists() for s in "ab"):
            time.sleep(0.2)  # both kernels are in their sleeping cells
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.count("terminated (SIGTERM)") == 2 and "run the same command again" in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted"
    assert [status["stages"][s]["status"] for s in "abc"] == ["interrupted", "interrupted", "pending"]
    assert not (run_dir / "a" / "ended").exists() and not (run_dir / "c").exists()


def test_jobs_is_checked_and_the_quickstart_stages_read_what_they_should(tmp_path):
    from tulu_kit.config import REPO_ROOT, ConfigError, stage_dependencies
    from tulu_kit.run import _readers, _share_of_cores

    path = tmp_path / "r.yaml"
    path.write_text("name: t\njobs: 0\nstages:\n  eval_gsm8k: {}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: jobs must be at least 1"):
        load_recipe(path)
    recipe = load_recipe(REPO_ROOT / "recipes/quickstart.yaml", run_dir=tmp_path / "run")
    names = [s.name for s in recipe.stages]
    reads = {
        names[i]: {names[j] for j in d}
        for i, d in enumerate(stage_dependencies(recipe.stages, recipe.run_dir))
    }
    assert reads["quickstart"] == set() and reads["data"] == {"quickstart"}
    assert reads["sft"] == {"quickstart", "data"} and reads["data_on_policy"] == {"sft"}
    assert reads["dpo"] == {"sft", "data_on_policy"} and reads["ppo"] == reads["grpo"] == {"dpo"}
    assert reads["merge"] == {"sft", "ppo", "data"} and reads["reward"] == {"sft", "data"}
    assert reads["eval_gsm8k"] == {"ppo"} and reads["eval_truthfulqa_gen"] == {"ppo", "quickstart"}
    assert reads["report"] == set(names) - {
        "report"
    }  # it names the run folder: it reads every stage before it
    # the stages nothing can run beside keep every core; the others get their share
    below = _readers(stage_dependencies(recipe.stages, recipe.run_dir))
    envs = dict(zip(names, _share_of_cores(recipe, below)))
    assert recipe.jobs == 2 and [n for n, env in envs.items() if not env] == [
        "quickstart",
        "data",
        "sft",
        "report",
    ]
    # a relative path (the notebooks' ../runs/...) is read like ${run_dir}/...; a stage that names the run folder
    # (its last model) waits for every earlier stage, and every later one waits for it
    path.write_text(
        "name: rel\nstages:\n  quickstart: {}\n  eval_gsm8k: {model: '${run_dir}'}\n"
        "  sft: {model: ../runs/rel/quickstart/model}\n  eval_mmlu: {model: ~/elsewhere}\n"
    )
    rel = load_recipe(path)
    assert stage_dependencies(rel.stages, rel.run_dir) == [set(), {0}, {0, 1}, {1}]
