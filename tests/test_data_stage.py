"""The data stage end to end: files, report, bad rows, decontamination, synthetic data, notebook 01."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tulu_kit.config import ConfigError, from_dict
from tulu_kit.data.decontam import load_eval_texts, ngram_overlap, remove_contaminated
from tulu_kit.data.stage import DataConfig, run
from tulu_kit.data.synthetic import synthetic_preference, synthetic_sft
from tulu_kit.data.validate import BadRowError
from tulu_kit.io import read_jsonl

ASSETS = Path(__file__).parent / "assets" / "data"


def test_synthetic_data_is_deterministic_and_varied():
    sft = synthetic_sft(300, seed=7)
    assert sft == synthetic_sft(300, seed=7) and sft != synthetic_sft(300, seed=8)
    assert sum(len(r["messages"]) > 3 for r in sft) == 27  # multi-turn (measured, seed 7)
    assert (
        sum(r["messages"][0]["role"] == "system" for r in sft) == 24
    )  # with a system turn (measured, seed 7)
    assert {t for r in sft for t in r["task"].split("+")} == {"arithmetic", "facts", "instructions"}
    pref = synthetic_preference(100, seed=7)
    assert all(p["chosen"][:-1] == p["rejected"][:-1] and p["chosen"] != p["rejected"] for p in pref)
    for row in sft:  # answers are correct, so there is something to learn
        for q, a in zip(row["messages"][-2::-2], row["messages"][::-2]):
            if " plus " in q["content"]:
                x, y = (int(w) for w in q["content"].rstrip("?").split()[-3::2])
                assert a["content"].endswith(f"So the answer is {x + y}.")


def test_run_writes_mixes_and_an_exact_report(tiny_model, tmp_path):
    cfg = DataConfig(
        out_dir=str(tmp_path / "data"),
        sft_mixer_list=[
            "synthetic_sft",
            0.5,
            f"alpaca:{ASSETS / 'alpaca.json'}",
            5,
            f"oasst1:{ASSETS / 'oasst1.jsonl'}",
            2.0,
        ],
        preference_mixer_list=["synthetic_preference", 40, f"hh_rlhf:{ASSETS / 'hh_rlhf.jsonl'}", 1.0],
        synthetic_size=120,
        eval_fraction=0.1,
        tokenizer=str(tiny_model),
        max_length=128,
    )
    result = run(cfg)
    out = Path(cfg.out_dir)
    report = json.loads((out / "report.json").read_text())
    sft_counts = {c["source"]: c for c in report["counts"]["sft"]}
    alpaca, oasst = (
        sft_counts[f"alpaca:{ASSETS / 'alpaca.json'}"],
        sft_counts[f"oasst1:{ASSETS / 'oasst1.jsonl'}"],
    )
    assert (alpaca["n_eval"], alpaca["n_taken"]) == (1, 5)  # 3 rows, 1 held out, 5 taken = upsampled
    assert (oasst["n_eval"], oasst["n_taken"]) == (1, 2)  # 2 trees, 1 held out, the other twice
    synth = sft_counts["synthetic_sft"]
    assert synth["n_taken"] == int(0.5 * (120 - synth["n_duplicates"] - synth["n_eval"]))
    sft, sft_eval = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "sft_eval.jsonl")
    assert len(sft) == report["totals"]["sft"] == sum(c["n_taken"] for c in report["counts"]["sft"])
    assert len(sft_eval) == sum(c["n_eval"] for c in report["counts"]["sft"])
    assert set(sft[0]) == {"messages", "source"}
    pref = read_jsonl(out / "preference.jsonl")
    assert len(pref) == 40 + 1 and set(pref[0]) == {"chosen", "rejected", "source"}
    assert len(read_jsonl(out / "preference_eval.jsonl")) == sum(
        c["n_eval"] for c in report["counts"]["preference"]
    )
    tokens = report["tokens"]
    assert tokens["sft"]["n_kept"] + tokens["sft"]["n_dropped_no_labels"] == len(sft)
    s = tokens["sft"]
    assert s["max_length"] == 128 if s["n_truncated"] else s["max_length"] < 128
    assert s["n_tokens"] == round(s["mean_length"] * s["n_kept"])  # mean_length is rounded to 2 decimals
    packing = tokens["packing"]
    # padded to max_length: real tokens / (rows x 128), by hand from the token count
    assert packing["padded_to_max_length"] == round(s["n_tokens"] / (s["n_kept"] * 128), 4)
    bins = s["n_tokens"] / (
        packing["packed"] * 128
    )  # packed = tokens / (bins x 128) for a whole number of bins
    assert bins == pytest.approx(round(bins), abs=0.01) and round(bins) >= math.ceil(s["n_tokens"] / 128)
    assert packing["padded_to_max_length"] < packing["packed"] <= 1
    assert any(trained for _, trained in result["tokens"]["example"])
    assert run(cfg)["totals"] == result["totals"]  # same seed, same mix
    assert read_jsonl(out / "sft.jsonl") == sft


def test_bad_rows_stop_the_stage_or_are_counted(tmp_path):
    spec = f"messages:{ASSETS / 'bad_rows.jsonl'}"
    cfg = DataConfig(
        out_dir=str(tmp_path), sft_mixer_list=[spec, 1.0], preference_mixer_list=[], tokenizer=""
    )
    with pytest.raises(BadRowError, match=r"bad_rows.jsonl: row 1: field 'messages\[0\].role'"):
        run(cfg)
    cfg.on_bad_row = "drop"
    result = run(cfg)
    count = result["counts"]["sft"][0]
    assert (count["n_read"], count["n_bad"]) == (7, 6) and len(count["bad_rows"]) == 5
    assert not (tmp_path / "preference.jsonl").exists()


def test_config_rejects_bad_mixer_lists():
    with pytest.raises(ConfigError, match="odd number"):
        from_dict(DataConfig, {"out_dir": "x", "sft_mixer_list": ["synthetic_sft"]}, "r.yaml")
    with pytest.raises(ConfigError, match="cannot tell its format"):
        from_dict(DataConfig, {"out_dir": "x", "sft_mixer_list": ["foo/bar", 1.0]}, "r.yaml")
    with pytest.raises(ValueError, match="holds preference data, not sft"):
        run(DataConfig(out_dir="x", sft_mixer_list=["synthetic_preference", 1.0], tokenizer=""))


def test_decontamination_lists_and_removes_overlaps(tmp_path):
    evals = tmp_path / "eval.jsonl"
    question = "Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May"
    evals.write_text(json.dumps({"question": question, "answer": "72"}) + "\n")
    train = [
        {"messages": [{"role": "user", "content": "Q: " + question.upper() + "?"}, {"role": "assistant", "content": "72"}],
         "source": "leaky"},
        {"messages": [{"role": "user", "content": "Natalia sold clips."}, {"role": "assistant", "content": "ok"}],
         "source": "clean"},
    ]  # fmt: skip
    report = ngram_overlap(train, {"gsm8k": load_eval_texts(evals)}, n=13)
    assert [(c.index, c.source, c.eval_set) for c in report.contaminated] == [(0, "leaky", "gsm8k")]
    assert report.contaminated[0].n_shared == len(question.split()) - 13 + 1
    assert remove_contaminated(train, report) == (train[1:], train[:1])
    assert remove_contaminated(train[1:], report, offset=1) == (train[1:], [])


def test_decontamination_on_real_eval_files(shared_data, tmp_path):
    gsm = shared_data / "gsm8k" / "test.jsonl"
    leaked = json.loads(gsm.read_text().splitlines()[5])["question"]
    cfg = DataConfig(
        out_dir=str(tmp_path),
        sft_mixer_list=[f"alpaca:{shared_data / 'alpaca' / 'alpaca_data_sample2000.json'}", 300],
        preference_mixer_list=[],
        tokenizer="",
        eval_fraction=0.0,
        decontam_eval_files=[str(gsm), str(shared_data / "ifeval" / "input_data.jsonl")],
        decontam_remove=True,
    )
    clean = run(cfg)["decontamination"]
    assert clean["eval_sets"] == {"test.jsonl": 1319, "input_data.jsonl": 541}
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"prompt": leaked, "completion": "42"}) + "\n")
    cfg.sft_mixer_list = [*cfg.sft_mixer_list, f"prompt_completion:{leak}", 1]
    result = run(cfg)
    assert result["decontamination"]["n_contaminated"] == clean["n_contaminated"] + 1
    assert result["decontamination"]["removed"] == clean["n_contaminated"] + 1
    assert all(r["source"] != f"prompt_completion:{leak}" for r in read_jsonl(tmp_path / "sft.jsonl"))


def test_decontamination_keeps_same_named_eval_files_apart_and_counts_exact(tmp_path):
    """gsm8k/test.jsonl and math500/test.jsonl are two eval sets, not one; removed rows leave n_taken."""
    question = "Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May"
    for folder, text in (("gsm8k", question), ("math500", "an unrelated problem about triangles")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test.jsonl").write_text(json.dumps({"question": text}) + "\n")
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"prompt": question, "completion": "72"}) + "\n")
    cfg = DataConfig(
        out_dir=str(tmp_path / "out"),
        sft_mixer_list=["synthetic_sft", 20, f"prompt_completion:{leak}", 3],
        preference_mixer_list=[],
        tokenizer="",
        eval_fraction=0.0,
        decontam_eval_files=[
            str(tmp_path / "gsm8k" / "test.jsonl"),
            str(tmp_path / "math500" / "test.jsonl"),
        ],
        decontam_remove=True,
    )
    result = run(cfg)
    decontam = result["decontamination"]
    assert decontam["eval_sets"] == {"gsm8k/test.jsonl": 1, "math500/test.jsonl": 1}
    assert decontam["contaminated_per_eval_set"] == {"gsm8k/test.jsonl": 3} and decontam["removed"] == 3
    leaky = result["counts"]["sft"][1]
    assert (leaky["n_taken"], leaky["n_contaminated"]) == (0, 3)
    assert result["totals"]["sft"] == sum(c["n_taken"] for c in result["counts"]["sft"]) == 20


def test_cli_data_mix_writes_the_exact_count(tmp_path, capsys):
    from tulu_kit.cli import main
    from tulu_kit.io import read_jsonl

    assert main(["data", "mix", "--sft", "synthetic_sft", "40", "--out", str(tmp_path)]) == 0
    assert '"sft": 40' in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "sft.jsonl")) == 40
