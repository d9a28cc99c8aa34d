"""Atomic file writes and strict JSONL reading, shared by every stage.

Nothing is ever written half: a writer fills a temporary file beside the target and renames it into place, so
an interrupted run leaves either the old file or the new one. Readers name the file and line of a bad row.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the published file gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_dir(final: str | Path) -> bool:
    """Clean up after writers of ``final`` on this host that were killed; True if ``final`` was put back.

    A writer killed mid-write leaves its temporary folder (removed here). One killed while publishing, between
    moving the old ``final`` aside and renaming the new one in, leaves no ``final``: the old one is put back.
    """
    final, restored = Path(final), False
    host = socket.gethostname()
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(.+)-(\d+)-[0-9a-f]+")
    for path in sorted(final.parent.glob(f".{final.name}.*")):
        match = pattern.fullmatch(path.name)
        if not match or match.group(2) != host or _alive(int(match.group(3))):
            continue
        if match.group(1) == "old" and not final.exists():
            os.replace(path, final)
            restored = True
        else:
            shutil.rmtree(path, ignore_errors=True)
    return restored


def _collective_token(is_main: bool) -> str:
    """Rank 0's token, sent to every rank when a process group is up (so all ranks fill one folder)."""
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    dist = sys.modules.get("torch.distributed")  # not imported: no process group, nothing to agree on
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return token
    box = [token if is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _publish(tmp: Path, final: Path, token: str) -> None:
    """Rename ``tmp`` to ``final``, moving any current ``final`` aside first; only whole folders ever move."""
    old = final.parent / f".{final.name}.old-{token}"
    while True:
        try:
            os.replace(final, old)  # another writer may publish between this rename and the next
        except FileNotFoundError:
            pass
        try:
            os.replace(tmp, final)
            break
        except OSError as e:  # final exists again (a concurrent writer won the slot): set it aside and retry
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | Path, is_main: bool | None = None, token: str = "") -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final`` whole, on failure it is
    removed.

    The temporary name is unique per writer (host, pid, random), so two writers of one target never fill the
    same folder: the last to finish wins, whole. ``is_main`` makes it collective for multi-rank saves (DeepSpeed
    ZeRO-3 ranks gather the weights together): every rank must call it, gets rank 0's temporary path (sent over
    the process group, or the ``token`` the caller gives), and only the main rank creates and renames it.
    Without ``is_main`` it is this process's alone. What killed writers left is cleaned up first (:func:`recover_dir`).
    """
    final = Path(final)
    collective = is_main is not None
    is_main = True if is_main is None else is_main
    token = token or (_collective_token(is_main) if collective else "")
    token = token or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = final.parent / f".{final.name}.tmp-{token}"
    if is_main:
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if is_main:
        _publish(tmp, final, token)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write all rows at once, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def _open_text(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a JSONL file, gzipped or not; a line that is not a JSON object names file and line."""
    path = Path(path)
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


def read_json(path: str | Path) -> Any:
    """A whole-file JSON document, gzipped or not; a syntax error names the file, line and column."""
    path = Path(path)
    with _open_text(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None


def read_rows(path: str, split: str = "train") -> list[dict]:
    """Rows of a local JSONL file, or of a Hub dataset (``allenai/tulu-3-sft-mixture``) when there is no such file."""
    if Path(path).is_file() or path.endswith((".jsonl", ".json")):
        return read_jsonl(path)
    from datasets import load_dataset

    return [dict(r) for r in load_dataset(path, split=split)]
