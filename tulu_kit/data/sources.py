"""Where a mixer entry's rows come from: a local file, an official URL, a Hub dataset, or the synthetic set.

A source is written ``[format:]name[@split]`` (notebook 01, the ``data`` stage):

- ``alpaca:../data/alpaca_data.json`` -- a local JSON / JSONL (optionally ``.gz``) or Parquet file;
- ``hh_rlhf:Anthropic/hh-rlhf@test`` -- a Hub dataset and split (``datasets.load_dataset``);
- ``alpaca`` -- a known format alone means its published Hub dataset (``tatsu-lab/alpaca``);
- ``code_alpaca:https://.../code_alpaca_20k.json`` -- an official file URL;
- ``synthetic_sft`` / ``synthetic_preference`` -- the offline quickstart data (:mod:`tulu_kit.data.synthetic`).
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from tulu_kit.data.formats import FORMATS
from tulu_kit.data.synthetic import synthetic_preference, synthetic_sft
from tulu_kit.io import FileFormatError, read_rows_file

logger = logging.getLogger(__name__)

SYNTHETIC = {"synthetic_sft": "sft", "synthetic_preference": "preference"}


@dataclass(frozen=True)
class Source:
    spec: str  # as written in the recipe
    format: str  # a FORMATS key or a SYNTHETIC name
    name: str  # path, URL, Hub id, or the synthetic name
    split: str = "train"

    @property
    def kind(self) -> str:
        return SYNTHETIC.get(self.format) or FORMATS[self.format].kind


def parse_source(spec: str) -> Source:
    """Parse ``[format:]name[@split]``; a bare known format or Hub id finds its format by itself."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"data source must be a non-empty string, got {spec!r}")
    rest, split = spec.strip(), "train"
    at = rest.rfind("@")
    if at > 0 and "/" not in rest[at:]:
        rest, split = rest[:at], rest[at + 1 :]
    if rest in SYNTHETIC:
        return Source(spec, rest, rest, split)
    fmt, colon, name = rest.partition(":")
    if colon and fmt in FORMATS:
        return Source(spec, fmt, name, split)
    if rest in FORMATS:
        if not FORMATS[rest].hub_id:
            raise ValueError(
                f"data source '{spec}': format '{rest}' has no published dataset; write {rest}:PATH"
            )
        return Source(spec, rest, FORMATS[rest].hub_id, split)
    for f in FORMATS.values():
        if f.hub_id == rest:
            return Source(spec, f.name, rest, split)
    known = [*FORMATS, *SYNTHETIC]
    typo = fmt if colon else rest
    guess = difflib.get_close_matches(typo, known, n=1) if colon or not set("./") & set(rest) else []
    if guess:  # a misspelt format, not a file or Hub id
        raise ValueError(f"data source '{spec}': unknown format '{typo}' (did you mean '{guess[0]}'?)")
    raise ValueError(
        f"data source '{spec}': cannot tell its format; write it as FORMAT:{rest} (formats: {', '.join(known)})"
    )


class DataFileError(FileFormatError):
    """A data file that cannot be read as rows; the message names the file (and the line when known)."""


def read_file(path: str | Path) -> list[dict]:
    """Rows of a local ``.json`` (array) / ``.jsonl`` (optionally gzipped) or ``.parquet`` file.

    Invalid UTF-8, a broken gzip stream, bad or too deeply nested JSON and a non-object row are each a
    one-line :class:`DataFileError` naming the file and line (:func:`tulu_kit.io.read_rows_file`)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"{path}: no such data file")
    return read_rows_file(path, DataFileError)


def load_rows(source: Source, *, seed: int = 42, synthetic_size: int = 500) -> list:
    """The raw rows of a source (in its published layout), from disk, an official URL or the Hub."""
    if source.format in SYNTHETIC:
        make = synthetic_sft if source.format == "synthetic_sft" else synthetic_preference
        return make(synthetic_size, seed=seed)
    if source.name.startswith(("http://", "https://")):
        import datasets

        logger.info("downloading %s", source.name)
        return list(datasets.load_dataset("json", data_files=source.name, split="train"))
    if Path(source.name).exists() or source.name.startswith((".", "/", "~")):
        return read_file(Path(source.name).expanduser())
    import datasets

    logger.info("loading %s (split %s) from the Hub", source.name, source.split)
    return list(datasets.load_dataset(source.name, split=source.split))
