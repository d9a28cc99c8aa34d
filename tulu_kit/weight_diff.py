"""Weight diffs in the Alpaca / Tulu 1 style, streamed shard by shard: ``make`` (diff = tuned − raw) and
``recover`` (tuned = raw + diff, verified against a checksum).

Tulu 1 was released as weight diffs against LLaMA-1 (licence), with a slightly modified copy of Stanford
Alpaca's ``weight_diff.py`` (github.com/tatsu-lab/stanford_alpaca/blob/main/weight_diff.py; open-instruct
``scripts/weights/weight_diff.py``). Those scripts load both full models; here only one input shard plus one
output shard is in memory at a time, so a 7B model never needs two full copies.

Round trips are bit-exact. Floating-point ``(raw + (tuned - raw))`` is not always ``tuned`` (when a weight
changes sign or by more than a factor of two, the subtraction rounds), so ``make`` checks every element and
stores the few exact values it could not reproduce in ``weight_diff_fixups.safetensors``; ``recover`` applies
them and then checks a SHA-256 of every tensor. The diff folder itself is a plain HF checkpoint whose weights
are ``tuned − raw`` (what Alpaca shipped). Diffs made by the Alpaca/Tulu 1 scripts (no ``weight_diff.json``)
are recovered too, without a checksum (a warning says so).

Embeddings: Alpaca/Tulu grew the raw vocabulary (a ``<pad>`` token) with new rows set to the mean of the old
ones (``smart_tokenizer_and_embedding_resize``); both directions here pad the raw rows the same way.

Also holds the shard-streaming helpers (:func:`weight_map`, :class:`ShardWriter`) that
``tulu_kit.merge`` uses. Used by ``notebooks/06_merging.ipynb`` and ``tulu-kit merge diff|recover``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from tulu_kit.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
DIFF_META = "weight_diff.json"
FIXUPS_NAME = "weight_diff_fixups.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_SKIP_FILES = {INDEX_NAME, "pytorch_model.bin.index.json", DIFF_META}
_EMBEDDING_NAMES = ("embed", "lm_head", "wte")
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --------------------------------------------------------------------------- checkpoint reading / writing


def weight_map(ckpt: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF checkpoint folder (sharded or not)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint folder")
    if (ckpt / INDEX_NAME).is_file():
        index = json.loads((ckpt / INDEX_NAME).read_text())
        return {name: ckpt / file for name, file in index["weight_map"].items()}
    if (ckpt / "model.safetensors").is_file():
        with safe_open(ckpt / "model.safetensors", framework="pt") as f:
            return {name: ckpt / "model.safetensors" for name in f.keys()}
    if any(ckpt.glob("*.bin")):
        raise ValueError(
            f"{ckpt}: only PyTorch .bin weights; re-save it with save_pretrained(safe_serialization=True)"
        )
    raise FileNotFoundError(f"{ckpt}: no model.safetensors or {INDEX_NAME}")


def tensor_specs(ckpt: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape), read from the safetensors headers only (no weights are loaded)."""
    specs: dict[str, tuple[str, tuple[int, ...]]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in weight_map(ckpt).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            for name in names:
                s = f.get_slice(name)
                specs[name] = (s.get_dtype(), tuple(s.get_shape()))
    return specs


def iter_tensors(primary: Path, others: list[Path], desc: str) -> Iterator[tuple[str, torch.Tensor, list]]:
    """Yield ``(name, primary tensor, [same tensor of each other checkpoint])`` one primary shard at a time.

    Each file handle is closed when its primary shard is done, so only that shard's tensors are resident.
    """
    maps = [weight_map(p) for p in others]
    by_file: dict[Path, list[str]] = {}
    for name, file in weight_map(primary).items():
        by_file.setdefault(file, []).append(name)
    for file, names in tqdm(by_file.items(), desc=desc, unit="shard"):
        with ExitStack() as stack:
            handles: dict[Path, object] = {}
            for name in names:
                tensors = []
                for path in [file] + [m[name] for m in maps]:
                    if path not in handles:
                        handles[path] = stack.enter_context(safe_open(path, framework="pt"))
                    tensors.append(handles[path].get_tensor(name))
                yield name, tensors[0], tensors[1:]


def parse_size(size: int | str) -> int:
    """``"2GB"`` / ``"500MB"`` / ``"40KB"`` / an int -> bytes (decimal units, as in ``max_shard_size``)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


class ShardWriter:
    """Write tensors into ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_size`` bytes.

    Only the current shard is held in memory; ``close()`` names the shards and writes the HF index.
    """

    def __init__(self, out_dir: str | Path, max_shard_size: int | str = "2GB"):
        self.out_dir = Path(out_dir)
        self.max_bytes = parse_size(max_shard_size)
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.shards: list[list[str]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + nbytes > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffer_bytes += nbytes
        self.total_size += nbytes

    def flush(self) -> None:
        if not self.buffer:
            return
        save_file(self.buffer, self.out_dir / f".shard-{len(self.shards)}.tmp", metadata={"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        n = len(self.shards)
        if n == 1:
            os.replace(self.out_dir / ".shard-0.tmp", self.out_dir / "model.safetensors")
            return
        weight_map_ = {}
        for i, names in enumerate(self.shards):
            file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / f".shard-{i}.tmp", self.out_dir / file)
            weight_map_.update(dict.fromkeys(names, file))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map_}
        atomic_write_json(self.out_dir / INDEX_NAME, index)


def copy_side_files(src: str | Path, dst: str | Path, overwrite: bool = True) -> None:
    """Copy config, generation config, tokenizer and chat template files (everything but weights)."""
    for path in Path(src).iterdir():
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name not in _SKIP_FILES:
            if not path.name.startswith(".") and (overwrite or not (Path(dst) / path.name).exists()):
                shutil.copy2(path, Path(dst) / path.name)


# --------------------------------------------------------------------------- diff arithmetic


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern as integers, so NaN, -0.0 and every rounding compare exactly."""
    return t.reshape(-1).view(_BITS[t.element_size()])


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(_bits(t.contiguous()).numpy().tobytes()).hexdigest()


def pad_embedding_rows(name: str, raw: torch.Tensor, rows: int) -> torch.Tensor:
    """Grow ``raw`` to ``rows`` rows, each new row its mean (Alpaca smart_tokenizer_and_embedding_resize)."""
    if raw.shape[0] == rows:
        return raw
    mean = raw.float().mean(dim=0, keepdim=True).to(raw.dtype)
    return torch.cat([raw, mean.expand(rows - raw.shape[0], *raw.shape[1:])])


def check_pair(raw: Path, other: Path, other_role: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Same tensor names, same shapes (an embedding may have more rows in ``other``), floating dtypes."""
    raw_specs, specs = tensor_specs(raw), tensor_specs(other)
    missing, extra = sorted(set(specs) - set(raw_specs)), sorted(set(raw_specs) - set(specs))
    if missing or extra:
        raise ValueError(
            f"{raw} and {other} hold different tensors: only in the {other_role}: {missing[:5]}, "
            f"only in the raw model: {extra[:5]}"
        )
    for name, (_, shape) in specs.items():
        raw_shape = raw_specs[name][1]
        grows = (
            any(k in name for k in _EMBEDDING_NAMES)
            and shape[1:] == raw_shape[1:]
            and shape[0] > raw_shape[0]
        )
        if shape != raw_shape and not grows:
            raise ValueError(
                f"{other}: tensor {name} has shape {list(shape)} but the raw model's is {list(raw_shape)}"
            )
    return specs


def _diff_dtype(name: str, tuned: torch.Tensor, diff_dtype: str | None) -> torch.dtype:
    if not tuned.is_floating_point():
        raise ValueError(f"tensor {name}: weight diffs need floating-point weights, got {tuned.dtype}")
    return getattr(torch, diff_dtype) if diff_dtype else tuned.dtype


@dataclass
class DiffReport:
    """What :func:`make_diff` wrote: the folder, its checksum and how many elements needed an exact fixup."""

    out_dir: Path
    sha256: str
    num_tensors: int
    num_params: int
    num_fixups: int


def make_diff(
    raw: str | Path,
    tuned: str | Path,
    out_dir: str | Path,
    diff_dtype: str | None = None,
    max_shard_size: int | str = "2GB",
) -> DiffReport:
    """Write ``tuned − raw`` to ``out_dir`` (an HF checkpoint) with the tuned model's config and tokenizer.

    ``diff_dtype`` (e.g. ``"float32"``) stores the diff wider than the weights; by default it has their dtype.
    """
    raw, tuned = Path(raw), Path(tuned)
    check_pair(raw, tuned, "tuned model")
    meta: dict = {"format": "tulu-kit weight diff v1", "formula": "diff = tuned - raw", "tensors": {}}
    fixups: dict[str, torch.Tensor] = {}
    num_params = 0
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, max_shard_size)
        for name, t, (r,) in iter_tensors(tuned, [raw], desc="make diff"):
            dtype = _diff_dtype(name, t, diff_dtype)
            r = pad_embedding_rows(name, r, t.shape[0]).to(dtype)
            d = t.to(dtype) - r
            bad = (_bits((r + d).to(t.dtype)) != _bits(t)).nonzero().squeeze(1)
            if len(bad):
                fixups[f"{name}::index"], fixups[f"{name}::value"] = bad, t.reshape(-1)[bad].clone()
            dtype_name = str(t.dtype).removeprefix("torch.")
            meta["tensors"][name] = {"dtype": dtype_name, "sha256": _sha256(t), "fixups": len(bad)}
            num_params += t.numel()
            writer.add(name, d)
        writer.close()
        num_fixups = sum(v["fixups"] for v in meta["tensors"].values())
        if fixups:
            save_file(fixups, tmp / FIXUPS_NAME)
        if num_fixups > 0.01 * num_params:
            log.warning(
                "%d of %d weights needed an exact fixup; diff_dtype='float32' stores fewer",
                num_fixups,
                num_params,
            )
        meta["sha256"] = hashlib.sha256(
            "".join(v["sha256"] for v in meta["tensors"].values()).encode()
        ).hexdigest()
        meta.update(num_fixups=num_fixups, num_params=num_params)
        copy_side_files(tuned, tmp)
        atomic_write_json(tmp / DIFF_META, meta)
    log.info(
        "weight diff %s: %d tensors, %d fixups, sha256 %s",
        out_dir,
        len(meta["tensors"]),
        num_fixups,
        meta["sha256"],
    )
    return DiffReport(Path(out_dir), meta["sha256"], len(meta["tensors"]), num_params, num_fixups)


def recover(
    raw: str | Path, diff: str | Path, out_dir: str | Path, max_shard_size: int | str = "2GB"
) -> Path:
    """Write ``raw + diff`` to ``out_dir`` and check it against the diff's checksums (bit-exact).

    Raises ValueError naming the first tensor that does not match (usually: the wrong raw model), and then
    ``out_dir`` is left untouched.
    """
    raw, diff = Path(raw), Path(diff)
    check_pair(raw, diff, "diff")
    meta_path = diff / DIFF_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and set(meta["tensors"]) != set(weight_map(diff)):
        raise ValueError(f"{meta_path}: lists different tensors than the diff's weights; the diff is corrupt")
    if meta is None:
        log.warning("%s has no %s (an Alpaca/Tulu 1 diff?): recovering without a checksum", diff, DIFF_META)
    with ExitStack() as stack, atomic_dir(out_dir) as tmp:
        fix = (
            stack.enter_context(safe_open(diff / FIXUPS_NAME, "pt"))
            if (diff / FIXUPS_NAME).is_file()
            else None
        )
        writer = ShardWriter(tmp, max_shard_size)
        for name, d, (r,) in iter_tensors(diff, [raw], desc="recover"):
            entry = meta["tensors"][name] if meta else None
            dtype = getattr(torch, entry["dtype"]) if entry else d.dtype
            t = (pad_embedding_rows(name, r, d.shape[0]).to(d.dtype) + d).to(dtype)
            if entry and entry["fixups"]:
                t.reshape(-1)[fix.get_tensor(f"{name}::index")] = fix.get_tensor(f"{name}::value")
            if entry and _sha256(t) != entry["sha256"]:
                raise ValueError(
                    f"{diff}: tensor {name}: recovered weights fail the checksum; is {raw} the raw model "
                    "this diff was made from?"
                )
            writer.add(name, t)
        writer.close()
        copy_side_files(diff, tmp)
    log.info("recovered %s from %s + %s%s", out_dir, raw, diff, " (checksum ok)" if meta else "")
    return Path(out_dir)
