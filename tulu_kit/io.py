"""Atomic file writes and strict JSONL reading, shared by every stage.

Nothing is ever written half: a writer fills a temporary file beside the target and renames it into place, so
an interrupted run leaves either the old file or the new one. Readers name the file and line of a bad row.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(final: str | Path, is_main: bool = True) -> Iterator[Path]:
    """Yield ``<parent>/.<name>.tmp`` to fill; on success it replaces ``final`` by renames, on failure it is removed.

    Every rank gets the same temporary path, and only the main rank creates and renames it, so all DeepSpeed
    ZeRO-3 ranks can take part in one save (they gather the weights together).
    """
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if is_main:
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)


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
