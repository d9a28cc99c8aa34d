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
import zlib
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


class FileFormatError(ValueError):
    """A file that cannot be read as rows; the message names the file and, when known, the line."""


_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _check_file(path: Path, error: type[ValueError]) -> None:
    if path.is_dir():
        raise error(f"{path}: a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")


def read_bytes(path: str | Path, error: type[ValueError] = FileFormatError) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz; a broken or truncated gzip stream is a one-line ``error``."""
    path = Path(path)
    _check_file(path, error)
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _GZIP_ERRORS as e:
        raise error(f"{path}: not a readable gzip file ({e})") from None


def parse_json(
    path: str | Path, data: bytes, line: int = 1, error: type[ValueError] = FileFormatError
) -> Any:
    """One JSON document from bytes starting at ``line`` of ``path``; invalid UTF-8, bad JSON and JSON nested too
    deeply for Python are each a one-line ``error`` naming file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = line + data[: e.start].count(b"\n")
        raise error(f"{path}: line {where}: not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = line + e.lineno - 1
        raise error(f"{path}: line {where}: not valid JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise error(f"{path}: line {line}: JSON nested too deeply") from None


def iter_jsonl(path: str | Path, error: type[ValueError] = FileFormatError) -> Iterator[tuple[int, dict]]:
    """(line number, row) of a JSONL file, gzipped or not, read line by line: a line that is not UTF-8, not JSON
    or not an object, or a broken gzip stream, is a one-line ``error`` naming file and line -- the one reader of
    JSONL in the kit."""
    path = Path(path)
    _check_file(path, error)
    n = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = parse_json(path, line.rstrip(b"\r\n"), n, error)
                if not isinstance(row, dict):
                    raise error(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
                yield n, row
    except _GZIP_ERRORS as e:
        raise error(f"{path}: not a readable gzip file after line {n} ({e})") from None


def read_jsonl(path: str | Path, error: type[ValueError] = FileFormatError) -> list[dict]:
    """All rows of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, error)]


def read_json(path: str | Path, error: type[ValueError] = FileFormatError) -> Any:
    """A whole-file JSON document, gzipped or not; a bad file names the file and line (see :func:`parse_json`)."""
    return parse_json(path, read_bytes(path, error), 1, error)


def read_rows_file(path: str | Path, error: type[ValueError] = FileFormatError) -> list[dict]:
    """Rows of a local ``.jsonl`` / ``.json`` (array) file, optionally gzipped, or a ``.parquet`` file; anything
    unreadable is a one-line ``error`` naming the file (and line)."""
    path = Path(path)
    _check_file(path, error)
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict(orient="records")
        except Exception as e:  # pyarrow raises its own types for a broken file
            raise error(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if not name.endswith(".json"):
        return read_jsonl(path, error)
    rows = read_json(path, error)
    if not isinstance(rows, list):
        raise error(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise error(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
    return rows


def read_rows(path: str, split: str = "train") -> list[dict]:
    """Rows of a local file (:func:`read_rows_file`), or of a Hub dataset (``allenai/tulu-3-sft-mixture``) when there is
    no such file."""
    if Path(path).is_file() or path.endswith((".jsonl", ".json", ".gz", ".parquet")):
        return read_rows_file(path)
    from datasets import load_dataset

    return [dict(r) for r in load_dataset(path, split=split)]
