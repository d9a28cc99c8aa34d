"""Sandboxed execution of model-written Python for the code benchmarks and the RL code reward.

Used by `tulu_kit/evals/humaneval.py` (and so by `eval/humaneval.ipynb`, `eval/humaneval_plus.ipynb`,
`eval/mbpp_plus.ipynb`) and `tulu_kit/rewards.py`. Standard library only: this file is also the runner script,
started as `python -I sandbox.py` with its job on stdin, so it never imports the package (or torch) there.

**Two processes, one verdict.** :func:`run_tests` runs the *candidate* (the model's program) in one sandboxed
process and the *tests* (`check(candidate)`, evalplus's inputs and expected outputs, an RL row's asserts) in
another, trusted one: the runner. The tests see each function the program defines as a stub that calls it over a
pipe and gets back plain data only -- JSON values with a tag for tuples, sets, dicts, bytes, complex numbers,
non-finite floats and numpy values; anything else arrives as an opaque `Foreign` value that equals nothing but
itself. No object of the candidate's ever reaches a comparison, so replacing `json.dumps` or `os.write`, reading
frames or descriptors, or returning an always-equal object changes nothing: the verdict is computed and written by
the runner, in a process the candidate can neither see (another PID namespace, another uid, not dumpable) nor
write to (the verdict file is never open in the candidate, which is a fresh interpreter: `exec`, not `fork`, so it
holds none of the runner's memory). A result whose pickle passes 2 MB crosses as its SHA-256 only (tagging a
million tuples as JSON costs more than evalplus's per-input limits): the trusted side compares it with the pickle
of the expected value, so it equals only the same value with the same types (no float tolerance at that size).
What the tests cannot do across the pipe: hold an instance of a class of the program (calling a class returns a
`Foreign`), see an argument the function mutated in place, or pass a function as an argument; HumanEval's and
evalplus's tests do none of these. :func:`run_program` is the degenerate case without tests: "the program ran to its end", as the program itself
reports it -- never use it to score.

Semantics kept from openai/human-eval `execution.py`: the harness imports what human-eval's process has loaded
before its guard (numpy, multiprocessing, tempfile: `HARNESS_IMPORTS`), works in a temporary folder, swallows
stdio, applies `reliability_guard`, then runs the program; the timeout (3 s there) counts from the start of the
program to the end of the tests, with no grace -- interpreter start-up and the trusted setup (evalplus's expected
outputs) are not counted, as in human-eval, whose timer also starts after its process has started. A program that
raises, calls `sys.exit()`/`os._exit()`, or dies before the tests end fails; "timed out" is reported separately.

Each run builds its own process tree:

* **runner** (this file's `__main__`, trusted): enters new mount, network, IPC, UTS and PID namespaces (plus a
  user namespace when not root), builds a private read-only root holding `/usr`, `/etc`, `/bin`, `/lib*`, the
  interpreter's own folders (its prefixes, standard library and site-packages -- never a folder a `.pth` file
  adds, such as an editable install's source tree), `/dev/{null,zero,full,random,urandom}`, a fresh `/proc` and a
  small private tmpfs on `/tmp`, `/var/tmp`, `/dev/shm`. It runs the trusted setup, then the tests against the
  candidate, and writes the verdict;
* **reaper**: pid 1 of the new PID namespace (`pivot_root` into the private root); when it dies, so does every
  process the candidate forked;
* **candidate**: closes every descriptor but stdio and its two pipe ends, sets CPU-time, address-space,
  file-size, process-count, open-file and message-queue limits, drops every capability (bounding set too), sets
  `no_new_privs`, becomes a unique unprivileged uid (when started as root), installs a seccomp filter, and
  `exec`s a fresh interpreter running `_CANDIDATE` (the harness: imports, guard, program, then a call loop).
  The seccomp filter kills the process on any foreign architecture (i386 through `int 0x80`, ...), refuses the
  x32 ABI, unix sockets, user and other namespaces (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag,
  `clone3`), SysV shared memory, `memfd_create`/`memfd_secret`, `io_uring`, `userfaultfd`, `bpf` and
  `perf_event_open` (x86-64 and arm64).

The parent enforces a backstop wall clock (the timeout plus `SETUP_S`) with SIGKILL on the runner's process group.
Without namespaces (a container that forbids `unshare`) or a private root, the sandbox degrades to
`isolation="rlimits"`: rlimits + process group + guard + seccomp + the privilege drop; the host's files are then
readable as the unprivileged uid, and the verdict says so.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

# --------------------------------------------------------------------------------------------- public API
SETUP_S = 60.0  # start-up + namespaces + the trusted setup: the parent's backstop on top of the timeout
MAX_RECORD = 1 << 20  # the verdict file is read up to this size
MAX_MESSAGE = (
    32 << 20
)  # the largest reply the candidate may send (a value past 2 MB of pickle goes as a digest)
# what human-eval's (and evalplus's) process has imported before its guard: a program may use them after it.
# numpy (0.14 s of CPU, a third of a sample's cost) is imported only for a program whose text names it or a
# package built on it; one that reaches it by an obfuscated name imports it after the guard, and fails.
HARNESS_IMPORTS = ("multiprocessing", "tempfile", "numpy")
NUMPY_USERS = ("numpy", "pandas", "scipy", "sklearn", "matplotlib", "torch")


class SandboxError(RuntimeError):
    """The sandbox itself cannot run programs faithfully here (never raised for a program's own fault)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program."""

    timeout_s: float = 3.0  # wall clock, the program's start to the tests' end (human-eval's default: 3.0)
    cpu_s: int | None = None  # CPU seconds (RLIMIT_CPU); None = ceil(timeout_s) + 2 (start-up included)
    memory_mb: int = 2048  # address space (RLIMIT_AS)
    max_procs: int = 16  # processes the sample may have at once (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # size of its private /tmp
    guard: bool = True  # also disable os.fork/os.kill/os.system/subprocess... (human-eval reliability_guard)
    preload: tuple[str, ...] = ()  # modules imported before the guard, on top of HARNESS_IMPORTS


@dataclass(frozen=True)
class Sample:
    """One job: the candidate's `program`, and the trusted `tests` run against it.

    `setup` runs in the trusted process before the tests (e.g. HumanEval's prompt, for its helper functions, or
    evalplus's expected outputs); a global the program defines is visible to the tests unless `setup` defines the
    same name, and the names in `bind` always come from the program (HumanEval's entry point)."""

    program: str
    tests: str = ""
    setup: str = ""
    bind: tuple[str, ...] = ()


@dataclass
class ExecResult:
    """The verdict on one program: `status` is "passed", "failed" or "timed out"."""

    status: str
    detail: str = ""  # e.g. "AssertionError: ..." for a failure
    stdout: str = ""  # the first few KB the program printed
    returncode: int | None = None
    wall_s: float = 0.0
    isolation: str = ""  # "namespaces" or "rlimits"
    extra: dict = field(default_factory=dict)  # what the tests reported through `__sandbox_report__`

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """human-eval's `result` string: "passed", "timed out" or "failed: <message>"."""
        return self.status if self.status != "failed" else f"failed: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def run_tests(sample: Sample, limits: Limits = Limits()) -> ExecResult:
    """Run `sample.program` in the sandbox and `sample.tests` against it in the trusted runner; the verdict
    (never raises for the program's sake; raises `SandboxError` when the sandbox cannot run programs faithfully
    here, or when the trusted setup or tests cannot even start)."""
    outer = tempfile.mkdtemp(prefix="tulu-sandbox-")
    start = time.monotonic()
    nonce = secrets.token_hex(16)  # lives in the parent and the runner only: the candidate is another image
    try:
        work = os.path.join(outer, "work")
        os.mkdir(work, 0o700)
        job = json.dumps({**asdict(sample), "limits": asdict(limits), "work": work, "nonce": nonce})
        result_path = os.path.join(outer, "result")
        with (
            open(result_path, "ab") as res,
            open(os.path.join(outer, "stdout"), "wb") as out,
            open(os.path.join(outer, "stderr"), "wb") as err,
        ):
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TULU_SANDBOX_RESULT_FD": str(res.fileno())}
            env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")  # no threads after
            # unshare(CLONE_NEWPID): the runner (which may import numpy for the tests) cannot start any
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", os.path.abspath(__file__), outer],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=work,
                env=env,
                pass_fds=(res.fileno(),),
                start_new_session=True,
            )
            timed_out = False
            try:
                try:
                    proc.stdin.write(job.encode())
                    proc.stdin.close()
                except BrokenPipeError:  # the runner died at start: its stderr says why
                    pass
                proc.wait(timeout=limits.timeout_s + SETUP_S)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_tree(proc)
        wall = time.monotonic() - start
        return _verdict(result_path, os.path.join(outer, "stderr"), nonce, proc.returncode, timed_out, wall)
    finally:
        _rmtree(outer)


def run_program(program: str, limits: Limits = Limits()) -> ExecResult:
    """Run one program without tests: "passed" when it ran to its end *by its own account* (the candidate
    reports that itself, so a program can fake it). To score, give trusted tests to :func:`run_tests`."""
    return run_tests(Sample(program), limits)


def run_many(
    samples: list[Sample | str], limits: Limits = Limits(), workers: int | None = None
) -> list[ExecResult]:
    """Run samples (a `Sample`, or a program without tests) concurrently, one sandbox each; results in order."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    jobs = [s if isinstance(s, Sample) else Sample(s) for s in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_tests, s, limits) for s in jobs]
        return [f.result() for f in tqdm(futures, desc="execute", disable=len(futures) < 50, leave=False)]


_ISOLATION: str | None = None


def isolation() -> str:
    """Which isolation this machine gives: "namespaces" (full) or "rlimits" (degraded). Probed once."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = run_program("pass", Limits(timeout_s=20)).isolation or "rlimits"
    return _ISOLATION


# --------------------------------------------------------------------------------------------- parent side


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the runner's process group; the reaper (PDEATHSIG) and its namespace follow."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _rmtree(path: str) -> None:
    def onerror(func, p, exc):  # a sample may chmod 000 its own files
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _records(result_path: str, nonce: str) -> list[dict]:
    """The runner's records (they carry this run's nonce, which only the parent and the runner know)."""
    with open(result_path, "rb") as f:
        data = f.read(MAX_RECORD)
    out = []
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("nonce") == nonce:
            out.append(rec)
    return out


def _verdict(
    result_path: str, stderr_path: str, nonce: str, rc: int | None, timed_out: bool, wall: float
) -> ExecResult:
    recs = _records(result_path, nonce)
    for rec in recs:
        if "error" in rec:
            with open(stderr_path, "rb") as f:
                tail = f.read()[-300:].decode("utf-8", "replace").strip()
            raise SandboxError(f"sandbox: {rec['error']}" + (f"; its stderr ends: {tail}" if tail else ""))
    iso = next((str(r["isolation"]) for r in recs if "isolation" in r), "")
    verdicts = [r for r in recs if r.get("status") in ("passed", "failed", "timed out")]
    if timed_out:
        return ExecResult("timed out", "", returncode=rc, wall_s=wall, isolation=iso)
    if len(verdicts) != 1:
        with open(stderr_path, "rb") as f:
            tail = f.read()[-500:].decode("utf-8", "replace").strip()
        why = f"{len(verdicts)} verdicts from the runner (exit status {rc})" + (f": {tail}" if tail else "")
        raise SandboxError(f"sandbox: {why}")
    verdict = verdicts[0]
    return ExecResult(
        verdict["status"],
        str(verdict.get("detail", "")),
        stdout=str(verdict.get("stdout", "")),
        returncode=rc,
        wall_s=wall,
        isolation=iso,
        extra=verdict.get("extra") or {},
    )


# --------------------------------------------------------------------------------------------- the wire
# Frames are an 8-byte length and a JSON text; values are tagged plain data. This source is executed by both
# sides: the runner (below) and the candidate's fresh interpreter (`_CANDIDATE`, which starts with it).
_WIRE = r'''
import json as _json, os as _os, sys as _sys

_sys.set_int_max_str_digits(0)


class Foreign:
    """A value of a type the wire does not carry: equal to nothing but itself."""

    def __init__(self, type_name, text):
        self.type_name, self.text = type_name, text

    def __repr__(self):
        return f"<{self.type_name} {self.text}>"

    __hash__ = object.__hash__


def _send(fd, obj):
    data = _json.dumps(obj, separators=(",", ":")).encode()
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[_os.write(fd, data):]


def _read_exact(fd, n):
    parts, got = [], 0
    while got < n:
        chunk = _os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _recv(fd, limit):
    n = int.from_bytes(_read_exact(fd, 8), "little")
    if n > limit:
        raise ValueError(f"a message of {n} bytes (limit {limit})")
    return _json.loads(_read_exact(fd, n))


def _enc(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if v is None or v is True or v is False:
        return v
    t = type(v)
    if t is str:
        return v
    if t is int:
        return v
    if t is float:
        return v if v - v == 0 else {"$": "float", "v": repr(v)}
    if t is list:
        return [_enc(x, d) for x in v]
    if t is tuple:
        return {"$": "tuple", "v": [_enc(x, d) for x in v]}
    if t is dict:
        return {"$": "dict", "v": [[_enc(k, d), _enc(x, d)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"$": t.__name__, "v": [_enc(x, d) for x in v]}
    if t is bytes or t is bytearray:
        return {"$": t.__name__, "v": bytes(v).hex()}
    if t is complex:
        return {"$": "complex", "v": [repr(v.real), repr(v.imag)]}
    mod = getattr(t, "__module__", "")
    if mod == "numpy" and hasattr(v, "dtype"):
        if hasattr(v, "shape") and t.__name__ == "ndarray":
            return {"$": "ndarray", "dtype": str(v.dtype), "v": _enc(v.tolist(), d)}
        return {"$": "np", "dtype": str(v.dtype), "v": _enc(v.item(), d)}
    if mod in ("decimal", "fractions"):
        return {"$": t.__name__, "v": str(v)}
    for base in (bool, int, float, str, tuple, list, dict, set, frozenset, bytes, complex):
        if isinstance(v, base):  # a subclass (a namedtuple, an IntEnum...): its plain value
            return _enc(base(v) if base is not dict else dict(v.items()), depth)
    try:
        text = repr(v)[:200]
    except BaseException:
        text = "?"
    return {"$": "foreign", "type": f"{mod}.{t.__qualname__}", "v": str(text)}


class _Hash:
    def __init__(self):
        import hashlib

        self.h, self.size = hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.size += len(b)
        return len(b)


def _digest(v):
    """(SHA-256, size) of `v`'s pickle without memo: two values of plain data pickle alike iff they are alike."""
    import pickle

    out = _Hash()
    pickler = pickle.Pickler(out, protocol=5)
    pickler.fast = True
    pickler.dump(v)
    return out.h.hexdigest(), out.size


def _reply(v):
    """A returned value as wire data: tagged plain data, or -- when its pickle passes 2 MB (~150k small tuples) --
    only its digest, which the trusted side compares with the expected value's."""
    try:
        digest, size = _digest(v)
    except Exception:
        size = 0
    if size > 2 << 20:
        return {"digest": digest}
    return {"ok": _enc(v)}


def _dec(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list:
        return [_dec(x, d) for x in v]
    if type(v) is not dict:
        raise ValueError(f"not a wire value: {type(v).__name__}")
    tag, x = v.get("$"), v.get("v")
    if tag == "tuple":
        return tuple(_dec(i, d) for i in x)
    if tag == "dict":
        return {_dec(k, d): _dec(i, d) for k, i in x}
    if tag == "set":
        return {_dec(i, d) for i in x}
    if tag == "frozenset":
        return frozenset(_dec(i, d) for i in x)
    if tag == "bytes":
        return bytes.fromhex(x)
    if tag == "bytearray":
        return bytearray.fromhex(x)
    if tag == "float":
        return float(x)
    if tag == "complex":
        return complex(float(x[0]), float(x[1]))
    if tag in ("Decimal", "Fraction"):
        import decimal, fractions

        return decimal.Decimal(x) if tag == "Decimal" else fractions.Fraction(x)
    if tag in ("np", "ndarray"):
        try:
            import numpy
        except ImportError:
            return Foreign(f"numpy.{v.get('dtype')}", repr(x))
        dtype = numpy.dtype(str(v["dtype"]))
        if dtype.kind == "O":
            raise ValueError("numpy object arrays do not cross the wire")
        return numpy.array(_dec(x, d), dtype=dtype) if tag == "ndarray" else dtype.type(_dec(x, d))
    if tag == "foreign":
        return Foreign(str(v.get("type")), str(x))
    raise ValueError(f"unknown wire tag {tag!r}")
'''

# The candidate's harness: a fresh interpreter (`python -I -B -c _CANDIDATE REQ RESP`) that imports what the
# official harnesses have loaded, swallows stdio, applies the guard, runs the program, tells the runner which
# names it defined, then answers calls until the runner is done. Nothing it sends is trusted beyond being data.
_CANDIDATE = (
    _WIRE
    + r'''
import builtins as _builtins

_REQ, _RESP = int(_sys.argv[1]), int(_sys.argv[2])


class _Swallow:
    """stdout/stderr/stdin for the program: keeps the first 4 KB written, reads fail (human-eval swallow_io)."""

    def __init__(self):
        self.kept, self.size = [], 0

    def write(self, s):
        if self.size < 4096:
            self.kept.append(str(s)[: 4096 - self.size])
            self.size += len(self.kept[-1])
        return len(s)

    def flush(self):
        pass

    def close(self):
        pass

    def readline(self, *a):
        raise EOFError("stdin is closed in the sandbox")

    read = readlines = readline

    def isatty(self):
        return False


def _reliability_guard():
    """openai/human-eval `execution.py` reliability_guard: disable destructive functions (not a sandbox by
    itself -- the namespaces, rlimits and seccomp are)."""
    import faulthandler, shutil as sh, subprocess as sp

    faulthandler.disable()
    _builtins.exit = None
    _builtins.quit = None
    _os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames truncate "
        "replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir"
    ).split():
        setattr(_os, name, None)
    sh.rmtree = sh.move = sh.chown = None
    sp.Popen = None
    _builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        _sys.modules[mod] = None


def _describe(v):
    """What the tests see of one global: a module, a callable, or a small plain value (a big table stays here)."""
    if isinstance(v, type(_sys)):
        return {"$": "module", "v": v.__name__}
    if callable(v):
        return {"$": "callable"}
    try:
        if _digest(v)[1] <= 1 << 16:
            return {"$": "value", "v": _enc(v)}
    except BaseException:
        pass
    return {"$": "value", "v": {"$": "foreign", "type": type(v).__name__, "v": "?"}}


def _main():
    job = _recv(_REQ, 1 << 30)
    missing = []
    for name in job["preload"]:
        try:
            __import__(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    import tempfile

    tempfile.gettempdir()  # cached before the guard takes os.getcwd (human-eval works in a temp folder too)
    if missing:
        _send(_RESP, {"op": "error", "detail": "the sandboxed program cannot import " + ", ".join(missing)})
        _os._exit(0)
    swallow = _Swallow()
    _sys.stdout = _sys.stderr = _sys.stdin = swallow
    send, recv, reply_for, dec, exit_now = _send, _recv, _reply, _dec, _os._exit  # kept: the program may patch
    send(_RESP, {"op": "loaded"})
    if job["guard"]:
        _reliability_guard()
    globs = {"__name__": "__main__", "__builtins__": _builtins}
    try:
        exec(compile(job.pop("program"), "program.py", "exec"), globs)
    except BaseException as e:  # SystemExit, MemoryError, KeyboardInterrupt count as failures too
        send(_RESP, {"op": "raised", "detail": f"{type(e).__name__}: {e}"[:1000]})
        exit_now(0)
    names = {}
    for k, v in list(globs.items()):
        if not (k.startswith("__") and k.endswith("__")):
            names[k] = _describe(v)
    send(_RESP, {"op": "ready", "names": names})
    while True:
        req = recv(_REQ, 1 << 30)
        op = req.get("op")
        if op == "call":
            try:
                out = globs[req["name"]](*dec(req["args"]), **dec(req["kwargs"]))
                reply = reply_for(out)
            except BaseException as e:
                reply = {"raise": [type(e).__name__, str(e)[:1000]]}
            try:
                send(_RESP, reply)
            except (ValueError, TypeError, RecursionError) as e:
                send(_RESP, {"raise": ["UnencodableResult", str(e)[:200]]})
        elif op == "stdout":
            send(_RESP, {"stdout": "".join(swallow.kept)})
        else:
            exit_now(0)


_main()
'''
)

# --------------------------------------------------------------------------------------------- the runner
# Everything below runs in the runner process (started as a script), never in the caller.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP, CLONE_NEWTIME = 0x02000000, 0x00000080
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
# statvfs f_flag bits -> the mount flags a read-only bind remount must keep (locked ones in a user namespace)
_KEEP_FLAGS = {
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}
_SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, src, target, fstype, flags, data=None) -> None:
    enc = [x.encode() if isinstance(x, str) else x for x in (src, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _enter_namespaces(libc) -> bool:
    """unshare(); as non-root also a user namespace mapping our uid to root inside it."""
    base = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.getuid(), os.getgid()
    if uid == 0 and libc.unshare(base) == 0:
        return True
    if libc.unshare(base | CLONE_NEWUSER) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return True


def _python_dirs() -> list[str]:
    """The interpreter's own folders: its prefixes, standard library and site-packages (real paths). Never a
    folder a `.pth` file adds to sys.path (an editable install's source tree, with its `.env`...)."""
    import site
    import sysconfig

    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    found.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    found.update(site.getsitepackages())
    return sorted({os.path.realpath(p) for p in found if os.path.isdir(p)} - {"/"})


def _keep(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEEP_FLAGS.items() if flags & st)


def _bind(libc, src: str, root: str) -> None:
    dst = root + src
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(libc, src, dst, None, MS_BIND | MS_REC)


def _mounts_under(root: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def _build_root(libc, root: str, limits: dict, owner: int) -> None:
    """Mount the private root at `root` (see the module docstring); everything read-only but the tmpfs."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # never propagate anything back to the host
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for d in ("/proc", "/.old", *_PRIVATE_DIRS):
        os.makedirs(root + d, exist_ok=True)
    private = [root + d for d in _PRIVATE_DIRS]
    opts = f"size={int(limits['tmpfs_mb'])}m,mode=700,uid={owner},gid={owner}"
    _mount(libc, "tmpfs", private[0], "tmpfs", MS_NOSUID | MS_NODEV, opts)
    for d in private[1:]:
        _mount(libc, private[0], d, None, MS_BIND)
    covered: list[str] = []  # the interpreter's folders go last: one under /tmp lands on the private tmpfs
    for src in [p for p in _SYSTEM if os.path.lexists(p)] + _python_dirs():
        if any(src == c or src.startswith(c + "/") for c in covered):
            continue
        if os.path.islink(src) and src in _SYSTEM:  # merged /usr: /lib -> usr/lib
            os.symlink(os.readlink(src), root + src)
        else:
            _bind(libc, src, root)
        covered.append(src)
    for dev in _DEVICES:
        if os.path.exists(f"/dev/{dev}"):
            _bind(libc, f"/dev/{dev}", root)
    for point in _mounts_under(root):
        if point not in private:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _keep(point))


# seccomp: (audit arch, x32 bit?, {syscall: number}) per machine
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, True, dict(socket=41, clone=56, shmget=29, unshare=272, setns=308, memfd_create=319,
                                      userfaultfd=323, bpf=321, perf_event_open=298, io_uring_setup=425,
                                      clone3=435, memfd_secret=447)),
    "aarch64": (0xC00000B7, False, dict(socket=198, clone=220, shmget=194, unshare=97, setns=268, memfd_create=279,
                                        userfaultfd=282, bpf=280, perf_event_open=241, io_uring_setup=425,
                                        clone3=435, memfd_secret=447)),
}  # fmt: skip
_NEW_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
)


def _seccomp_program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The candidate's filter as BPF (code, jt, jf, k): kill on a foreign architecture, refuse x32, unix sockets,
    namespaces, SysV shared memory, memfd, io_uring, userfaultfd, bpf, perf_event_open; allow the rest."""
    if machine not in _SECCOMP_ARCH:
        return None
    arch, x32, nr = _SECCOMP_ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    kill, allow = 0x80000000, 0x7FFF0000  # SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ALLOW
    eperm, eacces, enosys = 0x00050000 | 1, 0x00050000 | 13, 0x00050000 | 38  # SECCOMP_RET_ERRNO | errno
    # (instruction, jump-if-true label, jump-if-false label); labels resolve to relative offsets below
    code: list[tuple] = [
        ((ld, 0, 0, 4), None, None),  # arch
        ((jeq, 0, 0, arch), "native", "kill"),
        ("native", None, None),
        ((ld, 0, 0, 0), None, None),  # syscall number
    ]
    if x32:
        code.append(((jge, 0, 0, 0x40000000), "eperm", None))
    code += [
        ((jeq, 0, 0, nr["socket"]), "socket", None),
        ((jeq, 0, 0, nr["clone"]), "clone", None),
        ((jeq, 0, 0, nr["clone3"]), "enosys", None),  # glibc falls back to clone, which is checked
    ]
    for name in ("shmget", "unshare", "setns", "memfd_create", "memfd_secret", "userfaultfd", "bpf",
                 "perf_event_open", "io_uring_setup"):  # fmt: skip
        code.append(((jeq, 0, 0, nr[name]), "eperm", None))
    code += [
        ((ret, 0, 0, allow), None, None),
        ("socket", None, None),
        ((ld, 0, 0, 16), None, None),  # args[0], low 32 bits: the family
        ((jeq, 0, 0, 1), "eacces", None),  # AF_UNIX
        ((ret, 0, 0, allow), None, None),
        ("clone", None, None),
        ((ld, 0, 0, 16), None, None),  # args[0], low 32 bits: the flags
        ((jset, 0, 0, _NEW_NAMESPACES), "eperm", None),
        ((ret, 0, 0, allow), None, None),
        ("kill", None, None),
        ((ret, 0, 0, kill), None, None),
        ("eperm", None, None),
        ((ret, 0, 0, eperm), None, None),
        ("eacces", None, None),
        ((ret, 0, 0, eacces), None, None),
        ("enosys", None, None),
        ((ret, 0, 0, enosys), None, None),
    ]
    labels, pos = {}, 0
    for ins, _, _ in code:
        if isinstance(ins, str):
            labels[ins] = pos
        else:
            pos += 1
    prog, pos = [], 0
    for ins, jt, jf in code:
        if isinstance(ins, str):
            continue
        op, _, _, k = ins
        t = labels[jt] - pos - 1 if jt else 0
        f = labels[jf] - pos - 1 if jf else 0
        prog.append((op, t, f, k))
        pos += 1
    return prog


def _install_seccomp(libc) -> bool:
    import ctypes
    import platform

    prog = _seccomp_program(platform.machine())
    if prog is None:
        return False

    class Filter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*f) for f in prog])
    fprog = Prog(len(prog), filters)
    _check(libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, MODE_FILTER
    return True


def _enter_root(libc, root: str) -> None:
    """In the reaper (pid 1 of the new PID namespace): a fresh /proc, then make `root` the filesystem root
    and detach the host's (chroot where pivot_root is refused; the candidate cannot chroot back: no caps)."""
    try:
        _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as e:
        print(f"sandbox: no /proc inside ({e})", file=sys.stderr)
    import platform

    number = SYS_PIVOT_ROOT.get(platform.machine())
    os.chdir(root)
    if number is not None and libc.syscall(number, b".", b".old") == 0:
        os.chroot(".")
        _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
    else:
        os.chroot(root)
    os.chdir("/")


def _set_limits(limits: dict) -> None:
    import math
    import resource

    cpu = limits["cpu_s"] or math.ceil(limits["timeout_s"]) + 2
    mb = 1024 * 1024
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_DATA, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2),
        (resource.RLIMIT_NPROC, (limits["max_procs"],) * 2),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_MSGQUEUE, (0, 0)),
        (resource.RLIMIT_MEMLOCK, (0, 0)),
    ):
        resource.setrlimit(res, value)


def _capset(libc, caps: int) -> None:
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)(caps, caps, 0, 0, 0, 0)  # effective, permitted, inheritable (low 32 bits)
    _check(libc.capset(header, data), "capset")


def _drop_privileges(libc, sandbox_uid: int | None) -> None:
    """Drop every capability (bounding set too) and set no_new_privs; started as root, also become a unique
    unprivileged uid (setuid clears the capability sets of a non-root uid)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if sandbox_uid is not None:
        os.setgroups([])
        os.setgid(sandbox_uid)
        os.setuid(sandbox_uid)
    _capset(libc, 0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _environment_problem() -> str:
    """Why the candidate, as it now is, cannot use the kit's Python (empty when it can)."""
    for d in _python_dirs():
        if not os.access(d, os.R_OK | os.X_OK):
            return (
                f"the sandboxed program cannot read the Python installation folder {d} (uid {os.getuid()}); "
                "make it world-readable (chmod o+rx on it and its parents) or install the kit elsewhere"
            )
    return ""


def _start_candidate(job: dict, libc, sandbox_uid: int | None, isolated: bool, req: int, resp: int) -> None:
    """In the candidate's process (a child of the reaper): descriptors, limits, privileges, seccomp, then a fresh
    interpreter running the harness (`exec`: none of the runner's memory survives)."""
    os.closerange(3, min(req, resp))
    os.closerange(min(req, resp) + 1, max(req, resp))
    os.closerange(max(req, resp) + 1, 1 << 16)
    os.set_inheritable(req, True)
    os.set_inheritable(resp, True)
    home = "/tmp" if isolated else job["work"]
    os.chdir(home)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    _set_limits(job["limits"])
    _drop_privileges(libc, sandbox_uid)
    problem = _environment_problem()
    if not problem:
        _install_seccomp(libc)  # no filter for an unknown machine: the namespaces and the privilege drop hold
    if problem:
        _WIRE_NS["_send"](resp, {"op": "error", "detail": problem})
        os._exit(0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large writes fail with EFBIG instead of killing it
    os.execve(sys.executable, [sys.executable, "-I", "-B", "-c", _CANDIDATE, str(req), str(resp)], env)


_WIRE_NS: dict = {}


class _TimedOut(BaseException):
    """The program and its tests ran past the timeout."""


class _Gone(BaseException):
    """The candidate's process ended before the tests did."""


class CandidateExit(BaseException):
    """The candidate's function raised SystemExit, KeyboardInterrupt... (as in human-eval: a failure)."""


class CandidateError(Exception):
    """The candidate's function raised an exception that is not one of Python's own."""


class _Conversation:
    """The runner's end of the pipes: calls into the candidate under one deadline."""

    def __init__(self, req: int, resp: int):
        self.req, self.resp, self.deadline = req, resp, None

    def recv(self, deadline: float | None = None):
        import select

        deadline = deadline if deadline is not None else self.deadline
        poller = select.poll()
        poller.register(self.resp, select.POLLIN | select.POLLHUP)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _TimedOut()
            if poller.poll(None if left is None else max(1, int(left * 1000))):
                break
        try:
            return _WIRE_NS["_recv"](self.resp, MAX_MESSAGE)
        except EOFError:
            raise _Gone() from None

    def send(self, obj) -> None:
        try:
            _WIRE_NS["_send"](self.req, obj)
        except BrokenPipeError:
            raise _Gone() from None

    def call(self, name: str, args: tuple, kwargs: dict):
        enc, dec = _WIRE_NS["_enc"], _WIRE_NS["_dec"]
        self.send({"op": "call", "name": name, "args": enc(list(args)), "kwargs": enc(kwargs)})
        reply = self.recv()
        if "ok" in reply:
            return dec(reply["ok"])
        if "digest" in reply:
            return Digest(str(reply["digest"]))
        kind, message = (str(x) for x in reply["raise"])
        builtin = getattr(builtins, kind, None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            try:
                exc = builtin(message)
            except TypeError:  # an exception class that wants other arguments
                exc = CandidateError(f"{kind}: {message}")
            raise exc
        if isinstance(builtin, type) and issubclass(builtin, BaseException):
            raise CandidateExit(f"{kind}: {message}")
        raise CandidateError(f"{kind}: {message}")


class Digest:
    """A big value the candidate returned, known only by its digest (`_reply`): equal to a value that pickles
    the same (computed here, from the trusted value), unequal to anything else."""

    def __init__(self, hexdigest: str):
        self.hexdigest = hexdigest

    def __eq__(self, other) -> bool:
        if isinstance(other, Digest):
            return self.hexdigest == other.hexdigest
        try:
            return _WIRE_NS["_digest"](other)[0] == self.hexdigest
        except Exception:
            return False

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<a large value, sha256 {self.hexdigest[:12]}>"


class _Function:
    """What the tests see for a function (or class) of the program: a call over the pipe, plain data back."""

    def __init__(self, conv: _Conversation, name: str):
        self._conv, self.__name__ = conv, name

    def __call__(self, *args, **kwargs):
        return self._conv.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<the program's {self.__name__}>"


def _bind_names(conv: _Conversation, names: dict, ns: dict, trusted: set, bind: list) -> None:
    """Put the program's globals into the tests' namespace: functions as `_Function`s, data as values, modules
    of the standard library re-imported here; the setup's own names win unless listed in `bind`."""
    import importlib

    for name, desc in names.items():
        if not isinstance(desc, dict) or (name in trusted and name not in bind):
            continue
        kind = desc.get("$")
        if kind == "callable":
            ns[name] = _Function(conv, name)
        elif kind == "module":
            mod = str(desc.get("v"))
            if mod.split(".")[0] in sys.stdlib_module_names:
                try:
                    ns[name] = importlib.import_module(mod)
                except ImportError:
                    pass
        elif kind == "value":
            try:
                ns[name] = _WIRE_NS["_dec"](desc.get("v"))
            except (ValueError, TypeError, KeyError, RecursionError):
                pass
    for name in bind:
        if names.get(name, {}).get("$") != "callable":
            ns.pop(name, None)  # the tests then fail with NameError, as when the program never defined it


class _Quiet:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def _oracle(job: dict, conv: _Conversation, ns: dict, reaper: int) -> dict:
    """Run the tests against the candidate; the verdict (status, detail, stdout, extra)."""
    limits = job["limits"]
    try:
        first = conv.recv(time.monotonic() + SETUP_S)
    except (_Gone, _TimedOut) as e:  # the program has not started: the sandbox cannot run it here (memory...)
        if isinstance(e, _TimedOut):
            os.kill(reaper, signal.SIGKILL)
        rc = _gone(reaper).get("rc")
        return {"error": f"the sandboxed interpreter ended before the program started (exit status {rc})"}
    if first.get("op") == "error":
        return {"error": str(first.get("detail"))}
    if first.get("op") != "loaded":
        return {"status": "failed", "detail": "the program broke the harness before it started"}
    conv.deadline = time.monotonic() + limits["timeout_s"]  # human-eval's timer: from the program's start
    msg = conv.recv()
    if msg.get("op") == "raised":
        return {"status": "failed", "detail": str(msg.get("detail"))[:1000]}
    if msg.get("op") != "ready" or not isinstance(msg.get("names"), dict):
        return {"status": "failed", "detail": "the program broke the harness"}
    trusted = set(ns)
    _bind_names(conv, msg["names"], ns, trusted, job["bind"])
    report: dict = {}
    ns["__sandbox_report__"] = report
    streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = _Quiet()
    try:
        exec(compile(job["tests"], "tests.py", "exec"), ns)
    finally:
        sys.stdout, sys.stderr = streams
    if time.monotonic() > conv.deadline:
        raise _TimedOut()
    verdict = {"status": "passed", "detail": "", "extra": report}
    try:
        conv.send({"op": "stdout"})
        verdict["stdout"] = str(conv.recv(time.monotonic() + 1.0).get("stdout", ""))[:4096]
    except BaseException:
        pass
    return verdict


def _wire_seconds(value) -> float:
    """What one value costs to cross the pipe (encode, JSON both ways, decode), measured here: the tests may add
    it to a per-call time limit that the in-process harnesses never had to pay (evalplus's per-input limits)."""
    t0 = time.perf_counter()
    try:
        reply = json.loads(json.dumps(_WIRE_NS["_reply"](value)))
        if "ok" in reply:
            _WIRE_NS["_dec"](reply["ok"])
        else:
            _WIRE_NS["_digest"](value)  # the comparison, on the trusted side
    except (ValueError, TypeError, RecursionError):
        pass
    return time.perf_counter() - t0


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _gone(reaper: int) -> dict:
    """The verdict when the candidate's process ended early (its exit status comes through the reaper's)."""
    try:
        _, status = os.waitpid(reaper, 0)
        rc = _exit_code(status)
    except ChildProcessError:
        rc = None
    if rc == 128 + signal.SIGXCPU:  # CPU-time limit: a timeout, as human-eval would report it
        return {"status": "timed out", "detail": "CPU time limit", "rc": rc}
    if rc == 0:
        return {"status": "failed", "detail": "the program exited before its tests finished", "rc": rc}
    return {"status": "failed", "detail": f"the program's process ended (exit status {rc})", "rc": rc}


def _write_record(fd: int, rec: dict) -> None:
    text = json.dumps(rec, default=repr)
    if len(text) > MAX_RECORD // 4:  # a huge `extra` must not push the verdict past what the caller reads
        rec = {k: rec[k] for k in ("nonce", "status", "detail", "isolation", "error") if k in rec}
        text = json.dumps(rec, default=repr)
    os.write(fd, b"\n" + text.encode() + b"\n")


def _runner_main(outer: str) -> None:
    import importlib.util

    exec(compile(_WIRE, "wire.py", "exec"), _WIRE_NS)
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    wanted = [*HARNESS_IMPORTS, *job["limits"]["preload"]]
    if not any(name in job["program"] for name in NUMPY_USERS):
        wanted.remove("numpy")
    job["preload"] = [m for m in dict.fromkeys(wanted) if importlib.util.find_spec(m) is not None]
    result_fd = int(os.environ.pop("TULU_SANDBOX_RESULT_FD"))
    os.set_inheritable(result_fd, False)
    nonce = job.pop("nonce")
    libc = _libc()
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no /proc/<pid>/mem, no ptrace, even for the same uid
    root = os.getuid() == 0
    sandbox_uid = 0x50000000 + os.getpid() if root else None  # unique per sample: its own process count
    isolated = _enter_namespaces(libc)
    iso = "namespaces" if isolated else "rlimits"
    new_root = os.path.join(outer, "root")
    if isolated:
        try:
            os.mkdir(new_root, 0o755)
            _build_root(libc, new_root, job["limits"], sandbox_uid if root else 0)
        except OSError as e:
            print(f"sandbox: no private root ({e}); isolation degrades to rlimits", file=sys.stderr)
            isolated, iso = False, "rlimits"
    if not isolated and root:
        os.chown(job["work"], sandbox_uid, sandbox_uid)

    def record(rec: dict) -> None:
        _write_record(result_fd, {"nonce": nonce, "isolation": iso, **rec})

    ns: dict = {"__name__": "__tests__", "__wire_seconds__": _wire_seconds}
    try:  # the trusted setup (HumanEval's prompt, evalplus's expected outputs), before the candidate starts
        exec(compile(job["setup"], "setup.py", "exec"), ns)
        compile(job["tests"], "tests.py", "exec")
    except BaseException as e:
        record({"error": f"the tests' setup failed: {type(e).__name__}: {e}"[:2000]})
        os._exit(0)
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    reaper = os.fork()
    if reaper == 0:  # pid 1 of the new PID namespace
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.close(req_w)
        os.close(resp_r)
        os.close(result_fd)
        ns.clear()
        if isolated:
            os.setsid()
            try:
                _enter_root(libc, new_root)
            except OSError as e:
                _WIRE_NS["_send"](resp_w, {"op": "error", "detail": f"cannot enter the private root ({e})"})
                os._exit(0)
        candidate = os.fork()
        if candidate == 0:
            try:
                _start_candidate(job, libc, sandbox_uid, isolated, req_r, resp_w)
            finally:
                os._exit(70)
        os.close(req_r)
        os.close(resp_w)
        job.clear()
        _, status = os.waitpid(candidate, 0)
        os._exit(_exit_code(status))
    os.close(req_r)
    os.close(resp_w)
    conv = _Conversation(req_w, resp_r)
    program = job.pop("program")
    conv.send({"program": program, "preload": job["preload"], "guard": job["limits"]["guard"]})
    del program
    try:
        verdict = _oracle(job, conv, ns, reaper)
    except _TimedOut:
        verdict = {"status": "timed out", "detail": ""}
    except _Gone:
        verdict = None
    except BaseException as e:  # the tests failed: an assertion, or anything the candidate's answers caused
        verdict = {"status": "failed", "detail": f"{type(e).__name__}: {e}"[:1000]}
    if verdict is None:
        verdict = _gone(reaper)
    else:
        try:
            os.kill(reaper, signal.SIGKILL)  # the PID namespace, and everything the candidate forked, ends
        except ProcessLookupError:
            pass
        try:
            os.waitpid(reaper, 0)
        except ChildProcessError:
            pass
    record(verdict)
    if not isolated and root:  # no private PID namespace: kill whatever the candidate left under its uid
        if os.fork() == 0:
            os.setuid(sandbox_uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.wait()
    os._exit(0)


if __name__ == "__main__":
    _runner_main(sys.argv[1])
