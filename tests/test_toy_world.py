"""The toy world: splits, benchmark files the kit's own scorers read, pretraining, on-policy pairs, seeds."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tulu_kit.data import synthetic as toy
from tulu_kit.data.onpolicy import label_pairs
from tulu_kit.evals import gsm8k, ifeval, mmlu


def _user_texts(rows: list[dict]) -> set[str]:
    return {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}


def test_held_out_questions_never_reach_training(tmp_path):
    bench = toy.toy_benchmarks(n=60)
    train = _user_texts(toy.synthetic_sft(2000, seed=1))
    pref = {r["chosen"][0]["content"] for r in toy.synthetic_preference(1000, seed=1)}
    rl = _user_texts(toy.synthetic_arithmetic(500, seed=1))
    held = {toy.gsm8k_user_text(p["question"]) for p in bench["gsm8k"]}
    held |= {r["prompt"] for r in bench["ifeval"]}
    held |= {toy.mmlu_user_text(r) for r in bench["mmlu"]}
    assert len(held) == len(bench["gsm8k"]) + 120  # distinct questions
    assert not held & (train | pref | rl)
    # and the training side does ask each task, in the benchmarks' own wording
    assert any(t.startswith("Answer the following question.\n\nQuestion: What is") for t in train)
    assert any(
        t.startswith("The following are multiple choice questions (with answers) about") for t in train
    )


def test_prompts_are_the_eval_notebooks_prompts():
    p = toy.arithmetic_item(__import__("random").Random(0))
    assert toy.gsm8k_user_text(p["question"]) == gsm8k.build_prompt({"question": p["question"]}, True, 0)[0]
    row = toy.fact_item(__import__("random").Random(0))
    assert toy.mmlu_user_text(row) == mmlu.build_prompt(row, [], 0)


def test_benchmark_files_are_scored_by_the_kits_scorers(tmp_path):
    root = toy.write_toy_benchmarks(tmp_path / "toy", n=20)
    bench = toy.toy_benchmarks(n=20)
    # GSM8K: the trained reply scores 1, a near miss 0
    right = [
        {"question": p["question"], "output": toy.arithmetic_reply(p)[len("Answer:") :]}
        for p in bench["gsm8k"]
    ]
    wrong = [
        {"question": p["question"], "output": toy.arithmetic_reply(p, p["answer"] + 1)}
        for p in bench["gsm8k"]
    ]
    assert gsm8k.score_predictions(right, str(root)).metrics["score"] == 1.0
    assert gsm8k.score_predictions(wrong, str(root)).metrics["score"] == 0.0
    # IFEval: lm-eval's checkers pass the following reply and fail the one that ignores the instruction
    inputs = ifeval.load_inputs(str(root))
    assert not ifeval.needs_punkt(inputs)
    follow = [{"prompt": r["prompt"], "response": toy.instruction_reply(r)} for r in bench["ifeval"]]
    ignore = [
        {"prompt": r["prompt"], "response": toy.instruction_reply(r, follow=False)} for r in bench["ifeval"]
    ]
    assert ifeval.score_predictions(follow, str(root)).metrics["prompt_level_strict_acc"] == 1.0
    assert ifeval.score_predictions(ignore, str(root)).metrics["prompt_level_loose_acc"] == 0.0
    # per instruction id: follow the quotation instruction only; each kind scores its own share
    mixed = [f if r["instruction_id_list"] == ["startend:quotation"] else g
             for r, f, g in zip(bench["ifeval"], follow, ignore)]  # fmt: skip
    m = ifeval.score_predictions(mixed, str(root)).metrics
    asked = Counter(r["instruction_id_list"][0] for r in bench["ifeval"])
    assert m["counts"]["per_group"] == asked and len(asked) > 1
    assert m["subscores"] == {k: float(k == "startend:quotation") for k in asked}
    # MMLU: one subject per fact table; the gold letter scores 1, a wrong one 0
    assert set(mmlu.subjects(str(root))) == set(toy.FACTS)
    gold = [{"question": r["question"], "subject": r["subject"], "choices": r["choices"], "prediction": r["answer"]}
            for r in bench["mmlu"]]  # fmt: skip
    assert mmlu.score_predictions(gold, str(root)).metrics["score"] == 1.0
    for g in gold:
        g["prediction"] = "ABCD"[("ABCD".index(g["prediction"]) + 1) % 4]
    assert mmlu.score_predictions(gold, str(root)).metrics["score"] == 0.0


def test_preference_pairs_prefer_the_verified_reply():
    from tulu_kit.rewards import verifiable_reward

    for row in toy.synthetic_rlvr(40, seed=2):
        assert verifiable_reward(row, row["reference"]) == 1.0
    pairs = toy.synthetic_preference(60, seed=2, off_format=0.0)
    arithmetic = [p for p in pairs if p["task"] == "arithmetic"]
    assert arithmetic
    for p in arithmetic:
        truth = gsm8k.extract_answer(p["chosen"][-1]["content"])
        assert truth != gsm8k.extract_answer(p["rejected"][-1]["content"])


def test_on_policy_labels_follow_the_verifiers():
    rows = toy.synthetic_rlvr(20, seed=3)
    arithmetic = [r for r in rows if r["dataset"] == "gsm8k"][:2]
    right, wrong = arithmetic[0]["reference"], "Answer: the answer is 1234."
    replies = [[right, wrong, wrong], [wrong, wrong, wrong]]
    pairs, counts = label_pairs(arithmetic, replies, seed=0)
    assert [p["chosen"][-1]["content"] for p in pairs] == [right, arithmetic[1]["reference"]]
    assert all(p["rejected"][-1]["content"] == wrong for p in pairs)
    assert counts["pairs_sampled_chosen"] == 1 and counts["pairs_reference_chosen"] == 1
    # every sample correct: nothing to prefer, no pair
    pairs, counts = label_pairs(arithmetic[:1], [[right, right]], seed=0)
    assert pairs == [] and counts["prompts_all_correct"] == 1
    # an empty reply (EOS at once) fails its verifier but is never a rejected side: a pair needs content
    pairs, counts = label_pairs(arithmetic, [[right, ""], ["  ", wrong]], seed=0)
    assert [p["rejected"][-1]["content"] for p in pairs] == [wrong] and counts["samples_empty"] == 2
    assert counts["prompts_no_rejected"] == 1


def test_pretraining_learns_the_corpus_and_is_deterministic(tmp_path):
    from tulu_kit.models import build_tiny_model, load_model, load_tokenizer
    from tulu_kit.quickstart import pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = build_tiny_model(tmp_path / "m", seed=0, hidden_size=32, num_layers=1)
        text = toy.pretraining_corpus(seed=0)
        tok = load_tokenizer(model_dir)
        runs = {}
        for name, lr in (("trained", 3e-3), ("again", 3e-3), ("control", 0.0)):
            runs[name] = pretrain(load_model(model_dir), tok, text, 60, lr, 8, 32, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert runs["trained"] == runs["again"]  # deterministic by seed
    last = sum(runs["trained"][-10:]) / 10
    control = sum(runs["control"][-10:]) / 10
    assert last < control - 1.5, (last, control)  # a learning rate of 0 learns nothing; 60 steps learn a lot


def test_seed_table_bands_and_deltas():
    from tulu_kit.toy_eval import STARTS
    from tulu_kit.toy_eval import seed_table as table

    def seed_table(per_seed):
        return table(per_seed, STARTS)  # the quickstart's starts

    def run(base, sft):
        cell = lambda s: {"score": s, "stderr": 0.05, "n": 100}  # noqa: E731
        return {"quickstart": {b: cell(base) for b in ("gsm8k", "ifeval", "mmlu")},
                "sft": {b: cell(sft) for b in ("gsm8k", "ifeval", "mmlu")}}  # fmt: skip

    text, numbers = seed_table([run(0.1, 0.5), run(0.2, 0.7), run(0.0, 0.6)])
    assert list(text.columns) == ["benchmark", "base", "SFT", "Δ SFT"]
    row = numbers.iloc[0]
    assert row["base"] == pytest.approx(0.1) and row["base sd"] == pytest.approx(0.1)
    assert row["Δ SFT"] == pytest.approx(0.5) and text.iloc[0]["SFT"] == "0.600 ± 0.100"
    one, _ = seed_table([run(0.1, 0.5)])
    assert one.iloc[0]["base"] == "0.100 ± 0.050"  # one seed: ± the standard error
    # each Δ is from the model the stage started from: GRPO's from DPO, not from the PPO column beside it
    rl = {**run(0.1, 0.5), **{s: run(v, v)["sft"] for s, v in (("dpo", 0.6), ("ppo", 0.5), ("grpo", 0.8))}}
    _, numbers = seed_table([rl])
    assert numbers.iloc[0]["Δ PPO"] == pytest.approx(-0.1) and numbers.iloc[0]["Δ GRPO"] == pytest.approx(0.2)


def test_each_delta_is_from_the_start_the_stage_recorded(tmp_path):
    import yaml

    from tulu_kit.toy_eval import band_note, run_starts, seed_table, stage_starts

    run = tmp_path / "seed-1"

    def record(stage, file, **fields):
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / file).write_text(json.dumps(fields))

    def model(stage, root=run):
        return str(root / stage / "model")

    record("sft", "config.json", model=model("quickstart"))
    # from a run folder of the same name, moved since (the recorded path is gone)
    record("dpo", "config.json", model=model("sft", tmp_path / "moved" / "seed-1"))
    record("ppo", "config.json", model=model("sft"))  # PPO from SFT here, not from DPO as in the quickstart
    record("grpo", "config.json", model="allenai/Llama-3.1-Tulu-3-8B-DPO")  # outside the run: no Δ
    record("merge", "metrics.json", models=[model("sft"), model("dpo")])  # a soup of SFT and DPO
    starts = stage_starts(run)
    assert starts == {"sft": "quickstart", "dpo": "sft", "ppo": "sft", "merge": "dpo"}
    # another run's model that exists is another run's, whatever its folder's name: no Δ
    other = tmp_path / "elsewhere" / "seed-1" / "dpo" / "model"
    other.mkdir(parents=True)
    record("grpo", "config.json", model=str(other))
    assert "grpo" not in stage_starts(run)
    # a merge that did not record its models: the recipe's (config.yaml)
    record("merge", "metrics.json", method="linear")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"stages": {"merge": {"models": [model("sft"), model("ppo")]}}})
    )
    assert stage_starts(run)["merge"] == "ppo"
    record("merge", "metrics.json", models=[model("sft"), model("dpo")])
    # seeds: only the starts every seed run agrees on
    twin = tmp_path / "seed-2"
    (twin / "ppo").mkdir(parents=True)
    (twin / "ppo" / "config.json").write_text(json.dumps({"model": str(twin / "dpo" / "model")}))
    assert run_starts([run, twin]) == {} and run_starts([run]) == starts
    (twin / "sft").mkdir()  # a seed that agrees on SFT's start: that one is kept
    (twin / "sft" / "config.json").write_text(json.dumps({"model": str(twin / "quickstart" / "model")}))
    assert run_starts([run, twin]) == {"sft": "quickstart"}
    # a recipe file that does not parse, or a merge entry that is not a mapping: that Δ left out, no error
    record("merge", "metrics.json", method="linear")
    (run / "config.yaml").write_text("stages: [unclosed")
    assert "merge" not in stage_starts(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"stages": {"merge": ["not", "a", "mapping"]}}))
    assert "merge" not in stage_starts(run)
    record("merge", "metrics.json", models=[model("sft"), model("dpo")])
    cell = lambda s: {"score": s, "stderr": 0.05, "n": 100}  # noqa: E731
    scores = {stage: {b: cell(v) for b in ("gsm8k", "ifeval", "mmlu")}
              for stage, v in (("quickstart", 0.1), ("sft", 0.5), ("dpo", 0.6), ("ppo", 0.7), ("grpo", 0.9),
                               ("merge", 0.55))}  # fmt: skip
    _, numbers = seed_table([scores], starts)
    row = numbers.iloc[0]
    assert row["Δ PPO"] == pytest.approx(0.2) and row["Δ merge"] == pytest.approx(-0.05)
    assert "Δ GRPO" not in numbers.columns
    note = band_note(1, starts, numbers)
    assert note.endswith("(SFT from base, DPO from SFT, PPO from SFT, merge from DPO).")
    # a start whose column is not in the table gives no Δ, and the note does not list it
    _, fewer = seed_table([{k: v for k, v in scores.items() if k != "sft"}], starts)
    assert "Δ DPO" not in fewer.columns and band_note(1, starts, fewer).endswith("(merge from DPO).")
    assert "Δ" not in band_note(1, {}, numbers)


def test_kinds_table_and_its_sentence_come_from_the_scores():
    from tulu_kit.toy_eval import kinds_lines, kinds_table

    def kind(score, n):
        return {"score": score, "stderr": 0.1, "n": n}

    def run(sft_keywords, sft_case):
        def scores(kw, case):
            kinds = {"keywords:existence": kind(kw, 6), "change_case:english_capital": kind(case, 3),
                     "startend:quotation": kind(1.0, 1)}  # fmt: skip
            return {"ifeval": {"score": 0.0, "stderr": 0.0, "n": 10, "kinds": kinds}}

        return {"quickstart": scores(0.0, 0.0), "sft": scores(sft_keywords, sft_case)}

    one, numbers = kinds_table([run(0.5, 2 / 3)])
    assert list(one.columns) == ["benchmark", "instruction", "questions", "base", "SFT"]
    assert list(one["instruction"]) == [
        "keywords:existence",
        "change_case:english_capital",
        "startend:quotation",
    ]
    assert list(one["questions"]) == [6, 3, 1]
    assert one.iloc[1]["SFT"] == "0.667 ± 0.100"  # one seed: ± the kind's standard error, as the main table
    two, numbers = kinds_table([run(0.5, 2 / 3), run(0.0, 1 / 3)])
    assert two.iloc[0]["SFT"] == "0.250 ± 0.354" and two.iloc[1]["base"] == "0.000 ± 0.000"
    assert numbers.iloc[0]["SFT"] == pytest.approx(0.25) and numbers.iloc[0]["SFT sd"] == pytest.approx(
        0.3536, 1e-3
    )
    # the others together are weighted by their questions: (3 * 2/3 + 1 * 1) / 4 = 0.75, then 0.5 for seed 2
    (line,) = kinds_lines([run(0.5, 2 / 3)])
    assert "keywords:existence, is 6 of the 10 held-out questions; after SFT it scores 0.500" in line
    assert line.endswith("the other 2 together 0.750.")
    (line,) = kinds_lines([run(0.5, 2 / 3), run(0.0, 1 / 3)])
    assert "it scores 0.250, the other 2 together 0.625 (mean of 2 seeds)." in line
    # a tie in questions: the table's first row and the sentence name the same kind
    tie = run(0.5, 2 / 3)
    for stage in tie.values():
        stage["ifeval"]["kinds"]["change_case:english_capital"]["n"] = 6
    assert kinds_table([tie])[0].iloc[0]["instruction"] == "change_case:english_capital"
    assert "the most asked instruction, change_case:english_capital," in kinds_lines([tie])[0]
    # a kind only one seed scored: its row says n/a for the other, and no sentence pools the two
    extra = run(0.5, 2 / 3)
    extra["sft"]["ifeval"]["kinds"]["detectable_format:title"] = kind(1.0, 2)
    table = kinds_table([run(0.5, 2 / 3), extra])[0].set_index("instruction")
    assert (
        table.loc["detectable_format:title", "SFT"] == "n/a"
        and table.loc["detectable_format:title", "base"] == "n/a"
    )
    assert kinds_lines([run(0.5, 2 / 3), extra]) == []
    # a stage scored without its kinds (an older result) leaves the table empty, never half filled
    old = run(0.5, 2 / 3)
    del old["sft"]["ifeval"]["kinds"]
    assert kinds_table([old])[0].empty and kinds_lines([old]) == []


def test_an_older_seeds_scores_are_brought_up_to_date(tiny_model, tmp_path):
    import shutil

    from tulu_kit.data.synthetic import write_toy_benchmarks
    from tulu_kit.toy_eval import evaluate_run, read_scores, refresh

    run = tmp_path / "seed-1"
    shutil.copytree(tiny_model, run / "quickstart" / "model")
    write_toy_benchmarks(run / "data" / "toy_benchmarks", n=2)
    evaluate_run(run)
    scores_file = run / "toy_eval" / "scores.json"
    first = scores_file.stat().st_mtime_ns
    refresh([run])  # up to date: left as it is
    assert scores_file.stat().st_mtime_ns == first
    # as a kit without per-kind scores left it: no kinds in scores.json, a stamp without the version
    old = read_scores(run)
    del old["quickstart"]["ifeval"]["kinds"]
    scores_file.write_text(json.dumps(old))
    stamp = run / "toy_eval" / "quickstart" / "ifeval" / "model_stamp.txt"
    stamp.write_text(stamp.read_text().split(";", 1)[1])
    refresh([run])
    kinds = read_scores(run)["quickstart"]["ifeval"]["kinds"]
    assert sum(k["n"] for k in kinds.values()) == 2 and stamp.read_text().startswith("v2;")


def test_sanity_page_sets_out_the_table_the_kinds_and_the_rl_check(tmp_path):
    from tulu_kit.toy_eval import seed_page

    def scores(sft):
        def cell(s, kinds=None):
            return {"score": s, "stderr": 0.05, "n": 4, **({"kinds": kinds} if kinds else {})}

        def kinds(kw):
            return {"keywords:existence": {"score": kw, "n": 3}, "startend:quotation": {"score": 1.0, "n": 1}}

        return {"quickstart": {"gsm8k": cell(0.0), "ifeval": cell(0.0, kinds(0.0)), "mmlu": cell(0.25)},
                "sft": {"gsm8k": cell(sft), "ifeval": cell(0.25, kinds(0.0)), "mmlu": cell(0.25)},
                "dpo": {"gsm8k": cell(0.5), "ifeval": cell(0.25, kinds(0.0)), "mmlu": cell(0.25)}}  # fmt: skip

    runs = []
    for k, sft in ((1, 0.5), (2, 0.75)):
        run = tmp_path / f"seed-{k}"
        (run / "toy_eval").mkdir(parents=True)
        (run / "toy_eval" / "scores.json").write_text(json.dumps(scores(sft)))
        acc = {"sampled": 0.5, "greedy": 0.75, "n_prompts": 8}
        rl = {"grpo": {"frozen": acc, "trained": {**acc, "sampled": 0.5 + k / 8}, "kl_last": 0.01}}
        (run / "toy_eval" / "rl.json").write_text(json.dumps(rl))
        for stage in ("sft", "dpo"):  # each stage's record of its start: DPO here from base, not from SFT
            (run / stage).mkdir()
            (run / stage / "config.json").write_text(json.dumps({"model": str(run / "quickstart" / "model")}))
        runs.append(run)
    page, numbers = seed_page(runs)
    assert page.startswith("| benchmark") and "2 seeds: each cell is the mean" in page
    assert "| arithmetic" in page and "0.625 ± 0.177" in page  # SFT's sums: mean and sd of 0.5 and 0.75
    kinds = page[page.index("## By kind of question") : page.index("## The RL sanity check")]
    assert (
        "| keywords:existence" in kinds
        and "is 3 of the 4 held-out questions; after SFT it scores 0.000" in kinds
    )
    assert "the other 1 together 1.000 (mean of 2 seeds)." in kinds
    assert "+0.188 ± 0.088" in page  # GRPO's Δ sampled: 1/8 and 2/8
    assert numbers["rows"][0]["Δ SFT"] == pytest.approx(0.625) and len(numbers["kinds"]) == 2
    assert numbers["rows"][0]["Δ DPO"] == pytest.approx(0.5) and "DPO from base" in numbers["note"]
    assert seed_page([tmp_path / "nothing"]) == ("", {})


def test_seeds_run_the_recipe_once_per_seed(tmp_path):
    from tulu_kit.config import load_recipe
    from tulu_kit.run import seed_recipes

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "name: r\nseeds: [1, 2]\nstages:\n  quickstart: {}\n  sft: {model: '${run_dir}/quickstart/model'}\n"
    )
    recipe = load_recipe(recipe_file, ["sft.learning_rate=0.01"], run_dir=tmp_path / "out")
    assert recipe.seeds == [1, 2]
    runs = seed_recipes(recipe)
    assert [r.run_dir for r in runs] == [tmp_path / "out" / "seed-1", tmp_path / "out" / "seed-2"]
    for k, r in zip((1, 2), runs):
        assert not r.seeds and all(s.config.seed == k for s in r.stages)
        sft = r.stages[1].config
        assert sft.model == str(r.run_dir / "quickstart" / "model") and sft.learning_rate == 0.01
    recipe_file.write_text("name: r\nseeds: [1, 1]\nstages:\n  quickstart: {}\n")
    with pytest.raises(ValueError, match="repeats a seed"):
        load_recipe(recipe_file)


def test_quickstart_recipe_writes_the_toy_benchmarks_and_reports_them(tmp_path):
    from tulu_kit.config import load_recipe

    recipe = load_recipe("recipes/quickstart.yaml", run_dir=tmp_path)
    stages = {s.name: s.config for s in recipe.stages}
    assert stages["data"].toy_benchmarks > 0
    assert stages["data"].out_dir == str(tmp_path / "data")  # the report scores <run_dir>/data/toy_benchmarks
    assert stages["report"].run_dir == str(tmp_path) and stages["report"].toy_benchmarks == ""
    assert stages["quickstart"].pretrain_steps > 0
    assert json.loads(json.dumps(recipe.resolved()))  # serialisable as run.py writes it


def test_report_scores_every_stage_on_the_toy_world_and_bands_seeds(tiny_model, tmp_path):
    import shutil

    from tulu_kit.data.synthetic import write_toy_benchmarks
    from tulu_kit.report import ReportConfig, build
    from tulu_kit.toy_eval import read_scores

    runs = [tmp_path / "base" / f"seed-{k}" for k in (1, 2)]
    for run in runs:
        shutil.copytree(tiny_model, run / "quickstart" / "model")
        write_toy_benchmarks(run / "data" / "toy_benchmarks", n=2)
    (tmp_path / "base" / "seeds.json").write_text(
        json.dumps({"seeds": [1, 2], "runs": [str(r) for r in runs]})
    )
    # as the seeds run in turn (the last report sees both): the folder named, then the run's own by default
    for run, named in zip(runs, (str(runs[0] / "data" / "toy_benchmarks"), "")):
        report = build(ReportConfig(run_dir=str(run), toy_benchmarks=named))
    for run in runs:
        scores = read_scores(run)
        assert set(scores) == {"quickstart"} and scores["quickstart"]["gsm8k"]["n"] == 2
    table = report["toy_table"]
    assert list(table.columns) == ["benchmark", "base"] and len(table) == 3
    assert report["toy_note"].startswith("2 seeds")
    # the random model scores what it scores on both seeds (same weights): sd 0
    assert table.iloc[0]["base"].endswith("± 0.000")
    # each instruction id of the held-out instructions, with its question count, and the sentence computed from it
    kinds = report["kinds_table"]
    asked = Counter(
        r["instruction_id_list"][0] for r in ifeval.load_inputs(str(runs[0] / "data" / "toy_benchmarks"))
    )
    assert dict(zip(kinds["instruction"], kinds["questions"])) == asked
    assert report["kinds_note"] == []  # its sentence is about the SFT model, which this run has not


def test_seed_runs_band_only_the_seeds_that_ran_the_same_recipe(tmp_path):
    """While `make sanity` runs again with another setting, seed 1's report must not band its new run with seeds 2
    and 3 still holding the old one; each seed's own folder and seed differ and do not count."""
    import yaml

    from tulu_kit.toy_eval import seed_runs

    runs = [tmp_path / "base" / f"seed-{k}" for k in (1, 2, 3)]
    for k, run in enumerate(runs, 1):
        lr = 1e-4 if k < 3 else 2e-4  # seed 3 still holds the earlier setting
        config = {"name": "quickstart", "seed": k, "run_dir": str(run),
                  "stages": {"grpo": {"model": f"{run}/dpo/model", "out_dir": f"{run}/grpo", "seed": k,
                                      "learning_rate": lr}}}  # fmt: skip
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "base" / "seeds.json").write_text(
        json.dumps({"seeds": [1, 2, 3], "runs": [str(r) for r in runs]})
    )
    assert seed_runs(runs[0]) == runs[:2] and seed_runs(runs[1]) == runs[:2]
    assert seed_runs(runs[2]) == [runs[2]]
    (runs[1] / "config.yaml").unlink()  # nothing ran there through the runner: kept, as results made by hand
    assert seed_runs(runs[0]) == runs[:2]


def test_rl_table_bands_the_frozen_control_and_the_trained_policy():
    from tulu_kit.toy_eval import rl_table

    def seed(frozen, trained, kl):
        acc = lambda s: {"sampled": s, "greedy": s + 0.05, "n_prompts": 256}  # noqa: E731
        return {"grpo": {"frozen": acc(frozen), "trained": acc(trained), "kl_last": kl}}

    table = rl_table([seed(0.8, 0.9, 0.01), seed(0.7, 0.95, 0.03), {}])
    assert list(table["stage"]) == ["GRPO"] and table.iloc[0]["seeds"] == 2
    row = table.iloc[0]
    assert row["frozen sampled"] == "0.750 ± 0.071" and row["trained greedy"] == "0.975 ± 0.035"
    assert row["Δ sampled"] == "+0.175 ± 0.106" and row["KL (last)"] == "0.020"
    one = rl_table([seed(0.8, 0.9, None)]).iloc[0]
    assert one["Δ sampled"] == "+0.100" and one["KL (last)"] == "n/a"


def _always_says(src, out, digit: str):
    """A copy of the tiny model that says ``digit`` at every position, whatever the context: the layers add
    nothing to the residual stream, every token embeds to one vector, and only ``digit``'s output row sees it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(digit)] = 10.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_rl_line_says_what_its_numbers_say():
    from tulu_kit.toy_eval import rl_line

    start = {"sampled": 0.5, "greedy": 0.5, "n_prompts": 64}  # 256 replies; 0.5 -> 0.65: 2 * 0.04319
    assert " rose by more than two standard errors (0.086)" in rl_line(
        "GRPO", start, {**start, "sampled": 0.65}
    )
    assert " fell by more than two standard errors" in rl_line("GRPO", start, {**start, "sampled": 0.4})
    line = rl_line("PPO", start, {"sampled": 0.55, "greedy": 0.75, "n_prompts": 64})
    assert line.startswith(
        "PPO: sampled accuracy on its 64 training prompts (4 replies each) moved less than"
    )
    assert line.endswith("0.500 at its start (the frozen control), 0.550 trained; greedy 0.500 -> 0.750.")
    eight = rl_line("GRPO", {**start, "samples": 8}, {**start, "sampled": 0.6})  # 512 replies: 2 * 0.0309
    assert "(8 replies each) rose by more than two standard errors (0.062)" in eight


def test_heldout_line_uses_the_paired_standard_error():
    """Both models answer the same questions, so the bound is the paired difference's: 10 newly right and 2 newly
    wrong of 100 is +0.08 against 2 * 0.0339 (sd of the +1/-1/0 differences / 10); the unpaired bound of two
    proportions, 2 * sqrt((0.5 * 0.5 + 0.58 * 0.42) / 100) = 0.140, would say "moved less"."""
    import pandas as pd

    from tulu_kit.toy_eval import heldout_line, heldout_table

    questions = [f"q{i}" for i in range(100)]
    start_ok = [True] * 50 + [False] * 50
    trained_ok = [True] * 48 + [False] * 2 + [True] * 10 + [False] * 40  # 2 lost, 10 gained

    def result(ok):
        return pd.DataFrame({"question": questions, "truth": ["1"] * 100, "reply": [str(o) for o in ok],
                             "correct": ok})  # fmt: skip

    start, trained = result(start_ok), result(trained_ok)
    line = heldout_line("GRPO", start, trained)
    assert line == (
        "GRPO: accuracy on 100 held-out questions (never trained on; greedy, the GSM8K scorer) rose by more than "
        "two standard errors of the paired difference (0.068): 0.500 at its start, 0.580 trained (10 newly right, "
        "2 newly wrong)."
    )
    assert " fell by more than " in heldout_line("PPO", trained, start)
    assert " moved less than two standard errors of the paired difference (0.000)" in heldout_line(
        "PPO", start, start
    )
    table = heldout_table(start, trained)
    assert list(table["question"][:12]) == questions[48:60]  # the changed verdicts first
    shuffled = trained.iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="not on the same questions"):
        heldout_line("PPO", start, shuffled)
    with pytest.raises(ValueError, match="not on the same questions"):
        heldout_table(start, shuffled)
    with pytest.raises(ValueError, match="at least 2"):
        heldout_line("PPO", start[:1], trained[:1])
    # decided on the bound as printed: 21 newly right, 10 newly wrong is +0.110 against 2 SE = 0.10971, printed
    # 0.110; "rose by more than (0.110)" would contradict its own numbers
    edge = result([True] * 21 + [False] * 10 + [False] * 69)
    assert " moved less than two standard errors of the paired difference (0.110)" in heldout_line(
        "PPO", result([False] * 21 + [True] * 10 + [False] * 69), edge
    )


def test_heldout_sums_are_the_reports_questions_scored_as_the_report_scores(tiny_model, tmp_path):
    """The first 100 questions of the held-out split (those the data stage writes at toy_benchmarks: 100) with their
    truths, each model's replies and verdicts as the GSM8K eval wrote them, the accuracy its score on the data stage's
    files; a second call on unchanged weights and questions reads them back."""
    from tulu_kit.data.synthetic import write_toy_benchmarks
    from tulu_kit.io import read_jsonl
    from tulu_kit.toy_eval import HELDOUT_N, evaluate_stage, heldout_sums

    sums = heldout_sums(tiny_model, tmp_path / "heldout", "start")
    asked = toy.toy_benchmarks(HELDOUT_N)["gsm8k"]
    assert list(sums["question"]) == [q["question"] for q in asked]
    assert list(sums["truth"]) == [str(q["answer"]) for q in asked]
    scored = tmp_path / "heldout" / "start" / "gsm8k"
    # predictions.jsonl is in batch order, results.jsonl in question order: both are matched by id
    replies = {p["id"]: p["output"].strip() for p in read_jsonl(scored / "predictions.jsonl")}
    verdicts = {v["id"]: v["correct"] for v in read_jsonl(scored / "results.jsonl")}
    assert list(sums["reply"]) == [replies[str(i)] for i in range(100)]
    assert list(sums["correct"]) == [verdicts[str(i)] for i in range(100)]
    report = evaluate_stage(tiny_model, write_toy_benchmarks(tmp_path / "data", n=100), tmp_path / "eval",
                            benchmarks=("gsm8k",))  # fmt: skip
    assert set(report) == {"gsm8k"} and report["gsm8k"]["score"] == pytest.approx(sums["correct"].mean())
    before = (scored / "predictions.jsonl").stat().st_mtime_ns
    assert heldout_sums(tiny_model, tmp_path / "heldout", "start").equals(sums)
    assert (scored / "predictions.jsonl").stat().st_mtime_ns == before
    # the cache is keyed by the questions too: the same model on other benchmark files is scored again
    fewer = evaluate_stage(tiny_model, write_toy_benchmarks(tmp_path / "data50", n=50), tmp_path / "eval",
                           benchmarks=("gsm8k",))  # fmt: skip
    assert fewer["gsm8k"]["n"] == 50 and report["gsm8k"]["n"] == 100


def test_rl_check_scores_start_and_policy_on_the_stages_training_prompts(tiny_model, tmp_path):
    """The frozen control is the stage's start model and the trained side its policy, each scored on the stage's
    own training prompts: a policy that always says 7 passes every prompt whose answer is 7777 (4 tokens), the
    random start model none; a row the verifier fails counts as wrong."""
    import shutil

    from tulu_kit.io import write_jsonl
    from tulu_kit.toy_eval import read_json, rl_accuracy, rl_check

    rows = [{**r, "ground_truth": "7777"} for r in toy.synthetic_arithmetic(6, seed=0)]
    write_jsonl(tmp_path / "rl.jsonl", rows)
    _always_says(tiny_model, tmp_path / "run" / "grpo" / "model", "7")
    config = {"model": str(tiny_model), "train_file": str(tmp_path / "rl.jsonl"), "seed": 0, "temperature": 1.0,
              "max_completion_length": 4}  # fmt: skip
    (tmp_path / "run" / "grpo" / "config.json").write_text(json.dumps(config))
    (tmp_path / "run" / "grpo" / "metrics.json").write_text(json.dumps({"kl_last": 0.25, "kl_max": 0.5}))
    check = rl_check(tmp_path / "run")
    assert set(check) == {"grpo"}
    assert check["grpo"]["trained"] == {"sampled": 1.0, "greedy": 1.0, "n_prompts": 6, "samples": 4}
    assert check["grpo"]["frozen"] == {"sampled": 0.0, "greedy": 0.0, "n_prompts": 6, "samples": 4}
    assert json.loads((tmp_path / "run" / "toy_eval" / "rl.json").read_text())["grpo"]["kl_last"] == 0.25
    wrong = [{**r, "ground_truth": "12345"} for r in rows]  # no 4-token reply says it
    assert rl_accuracy(tmp_path / "run" / "grpo" / "model", wrong, 1.0, 4)["sampled"] == 0.0
    shutil.rmtree(
        tmp_path / "run" / "grpo" / "model"
    )  # the stage's model gone: its old row is not shown again
    assert rl_check(tmp_path / "run") == {} and read_json(tmp_path / "run" / "toy_eval" / "rl.json") == {}


def test_the_report_shows_the_rl_check_a_stage_notebook_printed(tiny_model, tmp_path):
    """rl_stage_check (notebooks 08 and 09) writes the stage's check beside its model; rl_check shows it as it is
    while both models, the prompts and the sampling are the ones it was made on, and samples again after any
    of them changed."""
    from types import SimpleNamespace

    from tulu_kit.io import write_jsonl
    from tulu_kit.toy_eval import rl_check, rl_stage_check

    rows = [{**r, "ground_truth": "7777"} for r in toy.synthetic_arithmetic(6, seed=0)]
    write_jsonl(tmp_path / "rl.jsonl", rows)
    model = _always_says(tiny_model, tmp_path / "run" / "grpo" / "model", "7")
    config = {"model": str(tiny_model), "train_file": str(tmp_path / "rl.jsonl"), "seed": 0, "temperature": 1.0,
              "max_completion_length": 4, "out_dir": str(tmp_path / "run" / "grpo")}  # fmt: skip
    (tmp_path / "run" / "grpo" / "config.json").write_text(json.dumps(config))
    cfg = SimpleNamespace(train_split="train", **config)
    check = rl_stage_check("grpo", cfg, model)
    assert check["trained"]["sampled"] == 1.0 and check["frozen"]["sampled"] == 0.0
    own = tmp_path / "run" / "grpo" / "rl_check.json"
    mark = json.loads(own.read_text())
    mark["trained"]["greedy"] = 0.5  # a value only the stage's file has
    own.write_text(json.dumps(mark))
    assert rl_check(tmp_path / "run")["grpo"]["trained"]["greedy"] == 0.5
    (tmp_path / "run" / "toy_eval" / "rl.json").unlink()
    config["temperature"] = 0.7  # another sampling: the stage's file is not this check's
    (tmp_path / "run" / "grpo" / "config.json").write_text(json.dumps(config))
    assert rl_check(tmp_path / "run")["grpo"]["trained"]["greedy"] == 1.0


def test_relative_lines_compare_a_model_with_its_reference():
    from tulu_kit.toy_eval import models_table, relative_lines

    def score(x, se=0.04):
        return {"score": x, "stderr": se, "n": 100}

    scores = {
        "LoRA": {"gsm8k": score(0.80), "ifeval": score(0.18), "mmlu": score(0.0, 0.0)},
        "full": {"gsm8k": score(0.86), "ifeval": score(0.38), "mmlu": score(0.0, 0.0)},
    }
    lines = relative_lines(scores, "LoRA", "full")
    assert lines[0] == "arithmetic: LoRA 0.800 vs full 0.860 (93% of it, ± 0.040 / ± 0.040): within 10%"
    assert (
        lines[1].startswith("instructions: LoRA 0.180 vs full 0.380 (47% of it") and "not within" in lines[1]
    )
    assert lines[2].startswith("facts: LoRA 0.000 vs full 0.000 (full scores 0,") and lines[2].endswith(
        ": within 10%"
    )
    table = models_table(scores)
    assert list(table.columns) == ["LoRA", "full"] and table.iloc[1, 1] == "0.380 ± 0.040"
