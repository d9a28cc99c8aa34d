"""GRPO stage (tulu_kit.grpo): config checks, the generation switch, TRL's group advantages by hand, and a short
run on the toy task whose mean reward rises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.lines import check_heldout_line, check_rl_line
from tulu_kit import grpo, toy_eval
from tulu_kit.data.synthetic import synthetic_arithmetic
from tulu_kit.io import write_jsonl


def _cfg(model, out, **overrides):
    base = dict(model=str(model), out_dir=str(out), num_generations=4, per_device_train_batch_size=8,
                gradient_accumulation_steps=1, max_completion_length=8, max_length=64, report_to="none")  # fmt: skip
    return grpo.GRPOConfig(**{**base, **overrides})


def test_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="num_generations must be at least 2"):
        _cfg("m", tmp_path, num_generations=1)
    with pytest.raises(ValueError, match=r"= 6 completions per step must be a multiple of num_generations 4"):
        _cfg("m", tmp_path, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="max_completion_length"):
        _cfg("m", tmp_path, max_completion_length=64)
    with pytest.raises(ValueError, match="beta"):
        _cfg("m", tmp_path, beta=-0.1)
    cfg = _cfg("m", tmp_path, beta=0.0, per_device_train_batch_size=4, gradient_accumulation_steps=4)
    assert cfg.beta == 0.0 and cfg.prompts_per_step == 4


def test_trl_args_carry_the_fields(tmp_path):
    args = grpo.trl_args(_cfg("m", tmp_path, loss_type="dr_grpo", beta=0.0, scale_rewards="none",
                              epsilon_high=0.28, num_iterations=2, temperature=0.7))  # fmt: skip
    assert (args.loss_type, args.beta, args.scale_rewards, args.epsilon, args.epsilon_high) == (
        "dr_grpo", 0.0, "none", 0.2, 0.28)  # fmt: skip
    assert (args.num_generations, args.max_completion_length, args.num_iterations) == (4, 8, 2)
    assert args.temperature == 0.7 and args.generation_batch_size == 8 and not args.use_vllm
    assert grpo.trl_args(_cfg("m", tmp_path)).epsilon_high is None  # 0: TRL then uses epsilon for both
    from trl import RLOOConfig

    rloo = grpo.trl_args(_cfg("m", tmp_path, algorithm="rloo", scale_rewards="none", beta=0.05))
    assert type(rloo) is RLOOConfig and not rloo.normalize_advantages and rloo.beta == 0.05
    assert grpo.trl_args(_cfg("m", tmp_path, algorithm="rloo", scale_rewards="batch")).normalize_advantages
    # one rollout split into two optimizer steps (open-instruct's num_mini_batches 2); the KL correction exposed
    args = grpo.trl_args(_cfg("m", tmp_path, gradient_accumulation_steps=2, optimizer_steps_per_rollout=2,
                              use_bias_correction_kl=False))  # fmt: skip
    assert (
        args.steps_per_generation == 4
        and args.generation_batch_size == 32
        and not args.use_bias_correction_kl
    )
    assert grpo.trl_args(_cfg("m", tmp_path)).use_bias_correction_kl  # TRL's default, kept


def test_no_silent_change_of_meaning(tmp_path):
    with pytest.raises(ValueError, match="RLOOTrainer can only normalise advantages over the whole batch"):
        _cfg("m", tmp_path, algorithm="rloo", scale_rewards="group")
    with pytest.raises(ValueError, match="use_bias_correction_kl is a GRPO setting"):
        _cfg("m", tmp_path, algorithm="rloo", scale_rewards="none", use_bias_correction_kl=False)
    with pytest.raises(ValueError, match="penalty_reward_value must be a finite number"):
        _cfg("m", tmp_path, penalty_reward_value=float("nan"))
    with pytest.raises(ValueError, match="reward_scale must be a finite number"):
        _cfg("m", tmp_path, reward_scale=float("inf"))


def test_non_stop_penalty_scores_truncated_completions():
    cfg = _cfg("m", "out", non_stop_penalty=True, penalty_reward_value=-1.0, reward_scale=10.0)
    (fn,) = grpo.reward_funcs(cfg, {2, 0})
    prompts = [[{"role": "user", "content": "What is 1 plus 1?"}]] * 3
    completions = [[{"role": "assistant", "content": "The answer is 2."}]] * 3
    ids = [[5, 6, 2], [5, 6, 7], [5, 0]]  # stopped by EOS, cut at the length limit, ended by pad
    scores = fn(prompts=prompts, completions=completions, completion_ids=ids, ground_truth=["2"] * 3,
                dataset=["gsm8k"] * 3)  # fmt: skip
    assert scores == [10.0, -1.0, 10.0]


def test_generation_switch(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    assert not grpo.use_vllm(_cfg("m", tmp_path, generation="auto"))
    assert not grpo.use_vllm(_cfg("m", tmp_path, generation="hf"))
    with pytest.raises(RuntimeError, match="generation: vllm, but vLLM is not installed.*generation: hf"):
        grpo.use_vllm(_cfg("m", tmp_path, generation="vllm"))
    # installed but no GPU: auto falls back to model.generate; colocate asked for explicitly is an error
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not grpo.use_vllm(_cfg("m", tmp_path, generation="auto"))
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        grpo.use_vllm(_cfg("m", tmp_path, generation="vllm"))
    assert grpo.use_vllm(_cfg("m", tmp_path, generation="vllm", vllm_mode="server"))


def test_bad_rows_are_named_before_work(tmp_path):
    rows = synthetic_arithmetic(3, seed=0)
    rows[2] = {"messages": rows[2]["messages"], "ground_truth": "1", "dataset": "gsm9k"}
    path = write_jsonl(tmp_path / "rl.jsonl", rows)
    with pytest.raises(ValueError, match=r"rl\.jsonl: line 3: key 'dataset' is 'gsm9k'"):
        grpo.load_rows(_cfg("m", tmp_path, train_file=str(path)))


def test_prompt_dataset_drops_long_prompts_and_keeps_columns(tiny_model):
    from tulu_kit.models import load_tokenizer

    rows = synthetic_arithmetic(4, seed=0)
    rows[1] = {**rows[1], "messages": [{"role": "user", "content": " ".join(str(i) for i in range(100))}]}
    rows[2] = {**rows[2], "dataset": "ifeval", "ground_truth": {"instruction_id_list": ["x"], "kwargs": [{}]}}
    ds, dropped = grpo.prompt_dataset(rows, load_tokenizer(tiny_model), 40)
    assert dropped == 1 and len(ds) == 3 and ds.column_names == ["prompt", "ground_truth", "dataset"]
    assert ds[0]["prompt"] == rows[0]["messages"] and ds[0]["ground_truth"] == rows[0]["ground_truth"]
    assert json.loads(ds[1]["ground_truth"]) == rows[2]["ground_truth"]  # mappings travel as JSON text


# --------------------------------------------------------------------------- a short run on the toy task


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> str:
    """The toy task with answers 0..4 (as test_ppo's): a correct answer is sampled often enough from the start."""
    return str(
        write_jsonl(tmp_path_factory.mktemp("toy") / "rl.jsonl", synthetic_arithmetic(512, 0, max_answer=4))
    )


@pytest.fixture(scope="module")
def warm_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model after a short SFT warm-up on the toy task's format ("The answer is N."): the format is
    learned, the sums only partly, so a sampled answer is sometimes right and GRPO has a signal."""
    from tulu_kit import sft

    out = tmp_path_factory.mktemp("warm")
    rows = synthetic_arithmetic(256, seed=1, max_answer=4)
    data = [{"messages": r["messages"] + [{"role": "assistant", "content": f"The answer is {r['ground_truth']}."}]}
            for r in rows]  # fmt: skip
    write_jsonl(out / "sft.jsonl", data)
    cfg = sft.SFTConfig(model=str(tiny_model), train_file=str(out / "sft.jsonl"), out_dir=str(out / "sft"),
                        launcher="none", report_to="none", max_length=64, learning_rate=5e-3, max_steps=60,
                        per_device_train_batch_size=16, warmup_ratio=0.0, logging_steps=20)  # fmt: skip
    return Path(sft.run(cfg)["model_dir"])


def _toy_cfg(warm_model, toy_file, out, learning_rate):
    return _cfg(warm_model, out, train_file=toy_file, num_generations=8, per_device_train_batch_size=32,
                gradient_accumulation_steps=2, max_steps=24, learning_rate=learning_rate, lr_scheduler_type="constant",
                beta=0.05, seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(warm_model, toy_file, tmp_path_factory):
    cfg = _toy_cfg(warm_model, toy_file, tmp_path_factory.mktemp("grpo"), 2e-3)
    return cfg, grpo.run(cfg)


def test_short_run_on_the_toy_task_raises_mean_reward(toy_run, warm_model, toy_file, tmp_path):
    """The learning test: the reward rises, beyond its frozen control (the same run at learning rate ≈ 0, whose
    sampled reward moves only by sampling noise)."""
    cfg, result = toy_run
    assert result["stage"] == "grpo" and result["train_steps"] == 24
    assert Path(result["model_dir"], "config.json").is_file() and Path(cfg.out_dir, "metrics.json").is_file()
    frozen = grpo.run(_toy_cfg(warm_model, toy_file, tmp_path / "frozen", 1e-12))  # learning rate ≈ 0
    gain = result["reward_last_quarter"] - result["reward_first_quarter"]
    frozen_gain = frozen["reward_last_quarter"] - frozen["reward_first_quarter"]
    assert 0 < result["reward_first_quarter"] and gain > frozen_gain + 0.05, (result, frozen)
    assert (
        math.isfinite(result["kl_last"]) and 0 <= result["kl_max"] < 2.0
    )  # KL to the reference stays bounded
    assert frozen["kl_max"] == pytest.approx(0.0, abs=1e-6)  # the frozen policy is its reference
    history = [json.loads(line) for line in Path(cfg.out_dir, "log_history.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "completions/mean_length", "clip_ratio/region_mean"} <= set(history[0])


def test_group_advantages_equal_a_hand_computation(toy_run):
    cfg, _ = toy_run
    logged = grpo.rollouts(cfg.out_dir)
    assert len(logged) == 24 * 8 * 8  # every step's rollouts: 8 prompts x G = 8
    informative = 0
    for step in (1, 12, 24):
        rows = logged[logged["step"] == step]
        prompts = rows["prompt"].to_list()
        for g in range(8):
            group = grpo.group_table(logged, cfg.num_generations, step=step, group=g)
            assert len(set(prompts[g * 8 : (g + 1) * 8])) == 1  # a group is one prompt's G completions
            r = group["verifiable"].to_list()
            mean = sum(r) / len(r)
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))  # unbiased, as TRL
            by_hand = [(x - mean) / (std + 1e-4) for x in r]
            assert group["advantage"].to_list() == pytest.approx(by_hand, abs=1e-5)
            informative += std > 0
    assert informative > 0  # some groups disagreed, so the check is not all zeros


def test_notebook_runs_and_its_by_hand_cell_meets_trl(warm_model, tmp_path, run_notebook):
    out = tmp_path / "grpo"
    nb = run_notebook("notebooks/09_grpo.ipynb", {"model": str(warm_model), "out_dir": str(out), "max_steps": 2,
                      "num_generations": 4, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                      "synthetic_size": 32})  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 2
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    gap = float(printed.split("max |TRL - by hand|:")[1].split()[0])
    assert gap < 1e-5
    # the RL sanity check's line, on the 32 training prompts, and the held-out line: their words are their numbers'
    check_rl_line(printed, "GRPO", 32)
    start, trained = check_heldout_line(printed, "GRPO")  # the start model's, scored again elsewhere:
    assert start == pytest.approx(
        toy_eval.heldout_sums(warm_model, tmp_path / "again", "start")["correct"].mean()
    )


# --------------------------------------------------------------------------- the checkpoint protocol, killed

SHORT = dict(max_steps=4, save_steps=2, num_generations=4, per_device_train_batch_size=8, learning_rate=2e-3,
             lr_scheduler_type="constant", beta=0.05, synthetic_size=64, seed=0, log_completions=False)  # fmt: skip


def _weights(result: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(result["model_dir"]) / "model.safetensors")


def _marked(out: Path) -> dict[str, bool]:
    return {p.name: (p / "COMPLETE").is_file() for p in sorted((out / "checkpoints").glob("checkpoint-*"))}


def test_kill_and_resume_ends_equal_to_the_uninterrupted_run(warm_model, tmp_path):
    """save_total_limit 1: killed while writing checkpoint-4 (checkpoint-2 stays the complete one); resumed from it
    and killed while writing the final model (checkpoint-4 rewritten and marked, checkpoint-2 rotated away only
    then); resumed again: checkpoint-4 is the run's last step, loaded, not trained past (no fifth step). The
    weights equal the uninterrupted run's (TRL restores the RNG, so the rollouts repeat). A resume with another
    learning rate is refused by name."""
    from tests.killed_run import run_killed
    from tulu_kit.checkpoints import CheckpointMismatch

    whole = grpo.run(_cfg(warm_model, tmp_path / "whole", **SHORT))
    out, kw = tmp_path / "killed", {**SHORT, "save_total_limit": 1}
    assert run_killed("grpo", _cfg(warm_model, out, **kw), "mid-save", 4) == -9
    assert _marked(out) == {"checkpoint-2": True, "checkpoint-4": False}
    with pytest.raises(CheckpointMismatch, match="learning_rate: 0.002 in the checkpoint, 0.001 now"):
        grpo.run(_cfg(warm_model, out, resume=True, **{**kw, "learning_rate": 1e-3}))
    assert run_killed("grpo", _cfg(warm_model, out, resume=True, **kw), "final-save") == -9
    assert _marked(out) == {"checkpoint-4": True} and not (out / "model").exists()
    resumed = grpo.run(_cfg(warm_model, out, resume=True, **kw))
    assert resumed["train_steps"] == whole["train_steps"] == 4
    logged = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logged if "loss" in h] == [1, 2, 3, 4]  # steps 1-4 once each, across the kills
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    gap = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - _weights({"model_dir": warm_model})[k].float()).abs().max().item() for k in a)
    assert moved > 1e-3 and gap == 0.0, (gap, moved)
    assert (
        resumed["reward_failures"] == whole["reward_failures"]
    )  # counted over the whole run, across the kills
