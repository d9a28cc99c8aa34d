"""TyDi QA GoldP: 1-shot reading comprehension in 9 languages, SQuAD F1 (notebook `eval/tydiqa.ipynb`).

Clark et al. 2020 ("TyDi QA: A Benchmark for Information-Seeking Question Answering in Typologically Diverse
Languages", TACL), GoldP task. Protocol of open-instruct `eval/tydiqa/run_eval.py`: per-language instruction and
"Passage:/Question:/Answer:" labels in that language, one exemplar from the training set, passages cut to 512
tokens, greedy decoding, 50 new tokens, stop at "\\n" (not in chat mode). Score: SQuAD v1.1 F1 (Rajpurkar et al.
2016, the official `evaluate-v1.1.py` normalization and token F1, max over gold answers), averaged per language,
then over languages.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass

from tulu_kit.evals.core import (
    Backend,
    EvalConfig,
    GenParams,
    Scored,
    chat_prompt,
    data_root,
    draw,
    finish,
    make_metrics,
    predict,
    require_file,
    select_subset,
)
from tulu_kit.io import read_json

NAME = "tydiqa"
DATA = "tydiqa_goldp"  # under the data root: what the score depends on (hashed into the manifest)
# language -> (instruction, passage label, question label, answer label), as open-instruct wrote them
TEMPLATES = {
    "english": (
        "Answer the following question based on the information in the given passage.",
        "Passage:",
        "Question:",
        "Answer:",
    ),
    "arabic": (
        "أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
        "المقطع:",
        "السؤال:",
        "الإجابة:",
    ),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
        "Kappale:",
        "Kysymys:",
        "Vastaus:",
    ),
    "indonesian": (
        "Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
        "Bagian:",
        "Pertanyaan:",
        "Jawaban:",
    ),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": (
        "Ответьте на следующий вопрос на основе информации в данном отрывке.",
        "Отрывок:",
        "Вопрос:",
        "Ответ:",
    ),
    "swahili": (
        "Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
        "Kifungu:",
        "Swali:",
        "Jibu:",
    ),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
PROTOCOL = {
    "shots": "1 exemplar per language from the training set (a held-out dev item where no train file exists)",
    "prompt": "{instruction}\\n\\n{Passage:} {context}\\n{Question:} {q}\\n{Answer:} {a}\\n\\n{Passage:} ...\\n"
    "{Answer:}  (labels in the example's language)",
    "decoding": "greedy, 50 new tokens, stop '\\n' (not in chat mode); passages cut to 512 tokens",
    "extraction": "the output, stripped",
    "metric": "SQuAD v1.1 F1 (max over gold answers); mean per language, then over languages",
    "source": "open-instruct eval/tydiqa/run_eval.py; SQuAD v1.1 evaluate script",
    "data": "tydiqa_goldp/dev/<language>_tydiqa_dev.json; tydiqa_goldp/train*/<language>_tydiqa_train*.json",
}


@dataclass
class TydiQAConfig(EvalConfig):
    """TydiQA settings; max_examples and subset apply per language (open-instruct ran 100 per language)."""

    out_dir: str = "../runs/lab/eval_tydiqa"
    max_examples: int | None = 100  # questions per language (open-instruct: 100; None: all)
    subset: str = "open-instruct"  # open-instruct's seeded sample (its ids); "" = the kit's nested draw
    max_context_tokens: int = 512  # passages are cut to this many tokens


CONFIG = TydiQAConfig


# ---------------------------------------------------------------------------------------------- SQuAD v1.1 F1
def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and English articles, collapse whitespace (SQuAD v1.1)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: list[str]) -> float:
    return max(f1_score(prediction, a) for a in answers)


# ---------------------------------------------------------------------------------------------- data
def _read(path) -> list[dict]:
    rows = []
    for article in read_json(path)["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                if not answers:
                    raise ValueError(f"{path}: question {qa.get('id')}: field answers is empty")
                lang = qa["id"].split("-")[0]
                rows.append(
                    {
                        "id": qa["id"],
                        "lang": lang,
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return rows


def languages(data_dir: str | None) -> list[str]:
    folder = require_file(data_dir, "tydiqa_goldp/dev", NAME)
    return sorted(p.name.split("_")[0] for p in folder.glob("*_tydiqa_dev.json"))


def load_dev(data_dir: str | None, lang: str) -> list[dict]:
    return _read(require_file(data_dir, f"tydiqa_goldp/dev/{lang}_tydiqa_dev.json", NAME))


def exemplar(data_dir: str | None, lang: str, dev: list[dict], seed: int) -> tuple[dict, str]:
    """One training example of `lang` (seeded choice), or the first dev item when no train file exists."""
    root = data_root(data_dir)
    for folder in ("train", "train_subset"):
        files = sorted((root / "tydiqa_goldp" / folder).glob(f"{lang}_tydiqa_train*.json"))
        if files:
            return random.Random(seed).choice(_read(files[0])), "train"
    return dev[0], "dev (held out)"


def build_prompt(ex: dict, demo: dict | None, chat: bool) -> tuple[str, str]:
    instr, p_t, q_t, a_t = TEMPLATES[ex["lang"]]
    text = instr + "\n\n"
    if demo is not None:
        text += f"{p_t} {demo['context']}\n{q_t} {demo['question']}\n{a_t} {demo['answers'][0]}\n\n"
    text += f"{p_t} {ex['context']}\n{q_t} {ex['question']}\n"
    return text, a_t


def score_predictions(preds: list[dict], data_dir: str | None = None) -> Scored:
    """Records with 'id' (a TyDi QA question id) and 'output'."""
    gold: dict[str, dict] = {}
    for lang in languages(data_dir):
        gold.update({r["id"]: r for r in load_dev(data_dir, lang)})
    verdicts, values, groups = [], [], {}
    for n, p in enumerate(preds, 1):
        if "id" not in p or "output" not in p:
            raise ValueError(f"prediction {n}: needs fields 'id' (TyDi QA question id) and 'output'")
        g = gold.get(str(p["id"]))
        if g is None:
            raise ValueError(f"prediction {n}: id {p['id']!r} is not in the TyDi QA GoldP dev set")
        f1 = best_f1(str(p["output"]).strip(), g["answers"])
        values.append(f1)
        groups.setdefault(g["lang"], []).append(f1)
        verdicts.append(
            {"id": g["id"], "lang": g["lang"], "gold": g["answers"], "output": p["output"], "f1": f1}
        )
    metrics = make_metrics(NAME, "f1", values, PROTOCOL, groups=dict(sorted(groups.items())), macro=True)
    return Scored(metrics, verdicts)


def run(cfg: TydiQAConfig, backend=None) -> dict:
    """1-shot GoldP answers for each language (max_examples per language), SQuAD F1, metrics.json."""
    groups, demos, sources = [], {}, {}
    for lang in select_subset(languages(cfg.data_dir), cfg.subset, "TyDi QA languages"):
        if lang not in TEMPLATES:
            raise ValueError(f"tydiqa_goldp/dev/{lang}_tydiqa_dev.json: no prompt template for {lang!r}")
        dev = load_dev(cfg.data_dir, lang)
        demos[lang], sources[lang] = exemplar(cfg.data_dir, lang, dev, cfg.seed)
        groups.append(dev)
    # drawn over whole languages in order (open-instruct's ids); a dev item held out as the exemplar (no train
    # file for that language) is then left out of the scored set
    held_out = {d["id"] for d in demos.values()}
    examples = [e for e in draw(cfg, groups) if e["id"] not in held_out]
    n_shot = 1 if cfg.n_shot is None else cfg.n_shot
    params = cfg.sampling(
        GenParams(max_new_tokens=cfg.max_new_tokens or 50, stop=() if cfg.chat else ("\n",))
    )

    def cut(be: Backend, text: str) -> str:
        ids = be.tokenizer(text, add_special_tokens=False)["input_ids"]
        return (
            text if len(ids) <= cfg.max_context_tokens else be.tokenizer.decode(ids[: cfg.max_context_tokens])
        )

    def compute(be: Backend, chunk: list[dict]) -> list[dict]:
        prompts = []
        for e in chunk:
            demo = {**demos[e["lang"]], "context": cut(be, demos[e["lang"]]["context"])} if n_shot else None
            text, prefix = build_prompt({**e, "context": cut(be, e["context"])}, demo, cfg.chat)
            prompts.append(chat_prompt(be.tokenizer, text, cfg.chat, prefix))
        outputs = [o.strip() for o in be.generate(prompts, params)]
        return [{**e, "prompt": p, "output": o} for e, p, o in zip(chunk, prompts, outputs)]

    preds = predict(
        cfg,
        examples,
        compute,
        backend,
        sort_key=lambda e: len(e["context"]),
        prompt_of=lambda e: demos[e["lang"]] if n_shot else None,
    )  # the exemplar
    scored = score_predictions(preds, cfg.data_dir)
    scored.metrics["exemplar_source"] = sources
    return finish(cfg, scored, params)
