"""Benchmark data root and `tulu-kit data prepare-eval`: where each benchmark's official files live.

The root holds one folder per benchmark in the layout of the project's shared data folder
(`gsm8k/test.jsonl`, `math500/test.jsonl`, `mmlu/dev/*.csv`, `bbh/bbh/*.json`, ...), so a copy of the official
files works as is. Default root: `$TULU_KIT_DATA`, else `~/.cache/tulu_kit/data`; `demo` names a
few hand-written items shipped in `tulu_kit/assets/eval_demo/` (offline demos, smoke tests; not benchmark data). Used by every `eval/*.ipynb`.

`prepare_eval()` downloads the official files (network needed; never called by tests) and lays them out the same
way. A missing file is a `MissingDataError` naming the file and the command that fetches it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tulu_kit.io import atomic_dir, atomic_path

log = logging.getLogger(__name__)


# a few hand-written items per benchmark in the same layout, for offline demos and smoke tests (not benchmark data)
DEMO_DATA = Path(__file__).resolve().parents[1] / "assets" / "eval_demo"


class MissingDataError(FileNotFoundError):
    """A benchmark file is not under the data root."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir` if given ("demo" = the shipped demo items), else `$TULU_KIT_DATA`, else `~/.cache/tulu_kit/data`."""
    if str(data_dir) == "demo":
        return DEMO_DATA
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("TULU_KIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tulu_kit" / "data"


def require_file(data_dir: str | os.PathLike | None, rel: str, benchmark: str) -> Path:
    """Path of `rel` under the data root, or a MissingDataError that says how to fetch it."""
    root = data_root(data_dir)
    path = root / rel
    if not path.exists():
        raise MissingDataError(
            f"{benchmark}: missing {path}. Fetch it with `tulu-kit data prepare-eval --only {benchmark} "
            f"--data-dir {root}` (needs a network), or point --data-dir / $TULU_KIT_DATA at a folder "
            f"holding {rel}"
        )
    return path


# ---------------------------------------------------------------------------------------------- downloads
GH = "https://raw.githubusercontent.com"
TOXIGEN_GROUPS = (
    "asian", "black", "chinese", "jewish", "latino", "lgbtq", "mental_disability", "mexican", "middle_east",
    "muslim", "native_american", "physical_disability", "trans", "women",
)  # fmt: skip
SOURCES: dict[str, list[tuple[str, str]]] = {
    # benchmark -> [(url, destination relative to the root)]; archives are unpacked by the functions below
    "gsm8k": [
        (f"{GH}/openai/grade-school-math/master/grade_school_math/data/test.jsonl", "gsm8k/test.jsonl")
    ],
    "math": [
        (
            "https://huggingface.co/datasets/HuggingFaceH4/MATH-500/resolve/main/test.jsonl",
            "math500/test.jsonl",
        )
    ],
    "mmlu": [("https://people.eecs.berkeley.edu/~hendrycks/data.tar", "mmlu")],
    "bbh": [("https://github.com/suzgunmirac/BIG-Bench-Hard/archive/refs/heads/main.zip", "bbh")],
    "tydiqa": [
        ("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json", "tydiqa_goldp/dev"),
        ("https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-train.json", "tydiqa_goldp/train"),
    ],
    "truthfulqa": [(f"{GH}/sylinrl/TruthfulQA/main/TruthfulQA.csv", "truthfulqa/v1_817/TruthfulQA.csv")],
    # Eval II: the URL / FILE constants of each benchmark module, written out so this module imports none of them
    "humaneval": [
        (
            "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz",
            "humaneval/HumanEval.jsonl.gz",
        )
    ],
    "humaneval_plus": [
        (
            "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
            "humaneval/HumanEvalPlus.jsonl.gz",
        )
    ],
    "mbpp_plus": [
        (
            "https://github.com/evalplus/mbppplus_release/releases/download/v0.1.0/MbppPlus.jsonl.gz",
            "mbpp/MbppPlus.jsonl.gz",
        )
    ],
    "ifeval": [
        (
            f"{GH}/google-research/google-research/master/instruction_following_eval/data/input_data.jsonl",
            "ifeval/input_data.jsonl",
        ),
        (f"{GH}/nltk/nltk_data/gh-pages/packages/tokenizers/punkt_tab.zip", "nltk_data/tokenizers/punkt_tab"),
    ],
    "toxigen": [
        (f"{GH}/microsoft/TOXIGEN/main/prompts/hate_{g}_1k.txt", f"toxigen/prompts/hate_{g}_1k.txt")
        for g in TOXIGEN_GROUPS
    ],
    "xstest": [
        (f"{GH}/paul-rottger/exaggerated-safety/main/xstest_prompts.csv", "xstest/xstest_prompts.csv")
    ],
    # the Tulu 3 suite (issue 26): IFBench at the vendored checker's commit and the 2025-07 release, NLTK data
    # its checkers need; DROP's dev file (simple-evals) + the official zip's train split (exemplars); AGIEval v1;
    # MMLU-Pro test + validation (Hub parquet -> JSONL); GPQA's zip as shipped (never unzipped); PopQA's test.tsv
    "ifbench": [
        (
            f"{GH}/allenai/IFBench/db69a6f05689830b0068b8f1529ebcfd2f3b164c/data/IFBench_test.jsonl",
            "ifbench/IFBench_test.jsonl",
        ),
        (
            f"{GH}/allenai/IFBench/8a66c069755e98b8d0871829751da9fd7b6ce8f0/data/IFBench_test.jsonl",
            "ifbench/IFBench_test_v2025-07_294.jsonl",
        ),
        (f"{GH}/nltk/nltk_data/gh-pages/packages/tokenizers/punkt_tab.zip", "nltk_data/tokenizers/punkt_tab"),
        (f"{GH}/nltk/nltk_data/gh-pages/packages/corpora/stopwords.zip", "nltk_data/corpora/stopwords"),
        (
            f"{GH}/nltk/nltk_data/gh-pages/packages/taggers/averaged_perceptron_tagger_eng.zip",
            "nltk_data/taggers/averaged_perceptron_tagger_eng",
        ),
    ],
    "drop": [
        (
            "https://openaipublic.blob.core.windows.net/simple-evals/drop_v0_dev.jsonl.gz",
            "drop/drop_v0_dev.jsonl.gz",
        ),
        (
            "https://s3-us-west-2.amazonaws.com/allennlp/datasets/drop/drop_dataset.zip",
            "drop/drop_dataset_train.json",
        ),
    ],
    "agieval": [
        (
            f"{GH}/ruixiangcui/AGIEval/5c77d073fda993f1652eaae3cf5d04cc5fd21d40/data/v1/{t}.jsonl",
            f"agieval/v1/{t}.jsonl",
        )
        for t in (
            "aqua-rat",
            "gaokao-english",
            "logiqa-en",
            "lsat-ar",
            "lsat-lr",
            "lsat-rc",
            "sat-en",
            "sat-math",
        )
    ],
    "mmlu_pro": [
        (
            "https://huggingface.co/datasets/TIGER-Lab/MMLU-Pro/resolve/main/data/test-00000-of-00001.parquet",
            "mmlu_pro/test.jsonl.gz",
        ),
        (
            "https://huggingface.co/datasets/TIGER-Lab/MMLU-Pro/resolve/main/data/validation-00000-of-00001.parquet",
            "mmlu_pro/validation.jsonl",
        ),
    ],
    "gpqa": [("https://github.com/idavidrein/gpqa/raw/main/dataset.zip", "gpqa/dataset.zip")],
    "popqa": [("https://huggingface.co/datasets/akariasai/PopQA/resolve/main/test.tsv", "popqa/test.tsv")],
    "alpaca_eval": [
        (
            f"{GH}/tatsu-lab/alpaca_eval/main/results/{ref}/model_outputs.json",
            f"alpaca_eval/results/{ref}/model_outputs.json",
        )
        for ref in ("text_davinci_003", "gpt4_1106_preview")
    ],
}


def _fetch(url: str) -> bytes:
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=120) as r:  # noqa: S310 - fixed official URLs
        return r.read()


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _unpack_mmlu(data: bytes, dest: Path, name: str = "") -> None:
    """hendrycks data.tar -> mmlu/{dev,test}/*.csv (original format: no header, answer letter)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) == 3 and parts[1] in ("dev", "test") and parts[2].endswith(".csv"):
                _write(dest / parts[1] / parts[2], tar.extractfile(m).read())


def _unpack_bbh(data: bytes, dest: Path, name: str = "") -> None:
    """BIG-Bench-Hard repo zip -> bbh/bbh/*.json and bbh/cot-prompts/*.txt."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            parts = Path(name).parts
            if len(parts) == 3 and parts[1] in ("bbh", "cot-prompts") and not name.endswith("/"):
                _write(dest / parts[1] / parts[2], z.read(name))


def _split_tydiqa(data: bytes, dest: Path, name: str = "") -> None:
    """Official GoldP file -> one `<language>_tydiqa_<split>.json` per language (split: `name` or dest's name)."""
    split = name or dest.name
    by_lang: dict[str, list] = {}
    for article in json.loads(data)["data"]:
        lang = article["paragraphs"][0]["qas"][0]["id"].split("-")[0]
        by_lang.setdefault(lang, []).append(article)
    for lang, articles in by_lang.items():
        body = json.dumps({"data": articles}, ensure_ascii=False).encode()
        _write(dest / f"{lang}_tydiqa_{split}.json", body)


def _unpack_zip(data: bytes, dest: Path, name: str = "") -> None:
    """A zip whose top folder is `name` (default: ``dest``'s name; NLTK's punkt_tab.zip) -> ``dest/...``."""
    top = name or dest.name
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.namelist():
            parts = Path(member).parts
            if len(parts) > 1 and parts[0] == top and not member.endswith("/"):
                _write(dest.joinpath(*parts[1:]), z.read(member))


def _parquet_to_jsonl(data: bytes, dest: Path) -> None:
    """A Hub parquet split -> JSONL (gzip when ``dest`` ends in .gz), one record per line, values as stored."""
    import gzip

    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    _write(dest, gzip.compress(body, mtime=0) if dest.suffix == ".gz" else body)


def _drop_train(data: bytes, dest: Path) -> None:
    """The official drop_dataset.zip -> its train JSON only (the exemplars' source)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("drop_dataset_train.json"))
        _write(dest, z.read(name))


# files converted on the way in (one file each, written atomically by the converter)
CONVERT: dict[str, Callable[[bytes, Path], None]] = {
    "test-00000-of-00001.parquet": _parquet_to_jsonl,
    "validation-00000-of-00001.parquet": _parquet_to_jsonl,
    "drop_dataset.zip": _drop_train,
}

UNPACK: dict[str, Callable[[bytes, Path, str], None]] = {
    "mmlu": _unpack_mmlu,
    "bbh": _unpack_bbh,
    "tydiqa": _split_tydiqa,
    "punkt_tab.zip": _unpack_zip,
    "stopwords.zip": _unpack_zip,
    "averaged_perceptron_tagger_eng.zip": _unpack_zip,
}


def prepare_eval(data_dir: str | None = None, only: list[str] | None = None, force: bool = False) -> Path:
    """Download the official files of `only` (default: all of SOURCES) into the data root."""
    root = data_root(data_dir)
    names = only or list(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"prepare-eval knows {sorted(SOURCES)}; not {unknown}")
    for name in names:
        for url, rel in SOURCES[name]:
            dest = root / rel
            if dest.exists() and not force:
                log.info("%s: %s exists, skipped (use --force to refetch)", name, dest)
                continue
            data = _fetch(url)
            unpack = UNPACK.get(name) or UNPACK.get(url.rsplit("/", 1)[-1])
            convert = CONVERT.get(url.rsplit("/", 1)[-1])
            if convert:
                convert(data, dest)
            elif unpack:
                # the whole folder at once: an interrupted unpack must not leave a partial folder that the
                # next run would skip as "exists"
                with atomic_dir(dest) as tmp:
                    unpack(data, tmp, dest.name)
            else:
                _write(dest, data)
    return root
