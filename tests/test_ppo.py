"""The ppo stage on the tiny model: config checks, the toy task's reward rising, the scorers as rewards, two
processes in sync, and a SIGKILLed run resumed to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tulu_kit import ppo
from tulu_kit.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]

# the toy configuration: 16 prompts per iteration, one mini-batch of 2 x 8, short responses, tiny-model lr
TOY = dict(rollout_batch_size=16, per_device_train_batch_size=8,
           gradient_accumulation_steps=2, response_length=12, max_length=128, temperature=1.0,
           num_ppo_epochs=4, learning_rate=1e-3, logging_steps=5)  # fmt: skip


def _cfg(model, out, **kw) -> ppo.PPOConfig:
    return ppo.PPOConfig(model=str(model), out_dir=str(out), **{**TOY, **kw})


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> str:
    """The toy task with answers 0..4: a correct one is sampled often enough from the start."""
    from tulu_kit.data.synthetic import synthetic_arithmetic
    from tulu_kit.io import write_jsonl

    return str(
        write_jsonl(tmp_path_factory.mktemp("toy") / "rl.jsonl", synthetic_arithmetic(256, 0, max_answer=4))
    )


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """The tests here use one torch thread; later test modules get the process's setting back (a thread count
    changes float reduction order, and the resume tests compare runs across processes)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def warm_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model after a few SFT steps on 'The answer is N.' (the quickstart's SFT format), so a correct
    answer is sampled now and then and PPO has a signal (pure torch: seconds)."""
    from tulu_kit import models
    from tulu_kit.data.synthetic import synthetic_arithmetic
    from tulu_kit.data.templates import encode_chat

    torch.set_num_threads(1)  # a tiny model: threads only contend
    torch.manual_seed(0)
    tokenizer, model = models.load_tokenizer(tiny_model), models.load_model(tiny_model)
    seqs = []
    for row in synthetic_arithmetic(256, seed=1):
        prompt = encode_chat(tokenizer, row["messages"], add_generation_prompt=True)
        reply = {"role": "assistant", "content": f"The answer is {row['ground_truth']}."}
        seqs.append((encode_chat(tokenizer, row["messages"] + [reply]), len(prompt)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = [seqs[(step * 16 + i) % len(seqs)] for i in range(16)]
        width = max(len(s) for s, _ in batch)
        ids = torch.full((16, width), tokenizer.pad_token_id)
        labels, mask = torch.full((16, width), -100), torch.zeros((16, width), dtype=torch.long)
        for i, (s, p) in enumerate(batch):
            ids[i, : len(s)], mask[i, : len(s)], labels[i, p : len(s)] = (
                torch.tensor(s),
                1,
                torch.tensor(s[p:]),
            )
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("warm") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="multiple of the mini-batch"):
        _cfg("m", tmp_path, rollout_batch_size=12)
    with pytest.raises(ValueError, match="temperature"):
        _cfg("m", tmp_path, temperature=0.0)
    with pytest.raises(ValueError, match="no room for a prompt"):
        _cfg("m", tmp_path, max_length=12)
    with pytest.raises(ValueError, match="kl_estimator"):
        _cfg("m", tmp_path, kl_estimator="kl9")


def test_bad_row_names_file_line_and_key(tiny_model, tmp_path):
    from tulu_kit import models

    data = tmp_path / "rl.jsonl"
    good = {
        "messages": [{"role": "user", "content": "What is 1 plus 1?"}],
        "ground_truth": "2",
        "dataset": "gsm8k",
    }
    data.write_text(json.dumps(good) + "\n" + json.dumps({**good, "dataset": "gsm9k"}) + "\n")
    cfg = _cfg(tiny_model, tmp_path / "out", train_file=str(data))
    with pytest.raises(ValueError, match=r"rl.jsonl: line 2: key 'dataset'"):
        ppo.load_prompts(cfg, models.load_tokenizer(tiny_model))


def test_batch_indices_cover_each_epoch_once_across_ranks():
    seen = [i for it in range(2) for rank in range(2) for i in ppo.batch_indices(8, it, 2, rank, 2, seed=3)]
    assert sorted(seen) == list(range(8))  # 2 iterations x 2 ranks x 2 prompts = one epoch, no repeats
    assert ppo.batch_indices(8, 2, 2, 0, 2, seed=3) != ppo.batch_indices(8, 0, 2, 0, 2, seed=3)


def test_toy_reward_rises_with_kl_bounded_and_rewards_are_the_scorers(warm_model, toy_file, tmp_path):
    """The learning test: the share of correct sampled answers rises, beyond its frozen control (the same run at
    learning rate ≈ 0, whose reward moves only by sampling noise); every logged reward is the scorer's."""
    from tulu_kit.evals import gsm8k

    torch.set_num_threads(1)
    kw = dict(train_file=toy_file, max_steps=20, rollout_batch_size=32, per_device_train_batch_size=16)
    result = ppo.run(_cfg(warm_model, tmp_path / "ppo", **kw))
    ppo.run(_cfg(warm_model, tmp_path / "frozen", learning_rate=1e-12, **kw))

    def gain(name):  # share of correct answers, iterations 16-20 minus iterations 1-5
        history = read_jsonl(tmp_path / name / "log_history.jsonl")
        assert [h["step"] for h in history] == list(range(1, 21))
        rewards = [h["verifiable_reward"] for h in history]
        return sum(rewards[-5:]) / 5 - sum(rewards[:5]) / 5, history

    (trained, history), (frozen, frozen_history) = gain("ppo"), gain("frozen")
    assert trained >= 0.1 and trained > frozen + 0.05, (trained, frozen)
    assert abs(history[-1]["kl"]) < 5.0  # summed over the response: the policy stays near the reference
    assert max(abs(h["kl"]) for h in frozen_history) < 1e-4  # the frozen policy is its reference
    assert result["train_steps"] == 20 and Path(result["model_dir"], "config.json").is_file()
    # every logged reward is the GSM8K eval scorer's verdict on the sampled text, times verification_reward
    samples = read_jsonl(tmp_path / "ppo" / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 20}
    for s in samples:
        pred = gsm8k.extract_answer(s["response"])
        verdict = float(pred is not None and gsm8k.is_correct(pred, s["ground_truth"]))
        assert s["verifiable_reward"] == verdict
        assert s["score"] in (10.0 * verdict, -10.0)  # -10: the non-stop penalty


def _write_config(path: Path, cfg: ppo.PPOConfig) -> Path:
    from tulu_kit.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.distributed
@pytest.mark.parametrize("deepspeed", ["", "recipes/deepspeed/zero2.json"], ids=["ddp", "zero2"])
def test_two_processes_end_with_identical_weights(tiny_model, tmp_path, deepspeed):
    cfg = _cfg(tiny_model, tmp_path / "run", max_steps=2, rollout_batch_size=8, per_device_train_batch_size=4,
               num_ppo_epochs=1, launcher="accelerate", num_processes=2, main_process_port=29561,
               deepspeed=deepspeed)  # fmt: skip
    result = ppo.run(cfg)
    assert result["world_size"] == 2 and result["zero_stage"] == (2 if deepspeed else 0)
    checksums = result["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    from safetensors.torch import load_file

    before = load_file(Path(tiny_model) / "model.safetensors")
    after = load_file(Path(result["model_dir"]) / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


def test_sigkill_then_resume_gives_the_uninterrupted_weights(warm_model, tmp_path):
    from safetensors.torch import load_file

    kw = dict(
        max_steps=6, save_steps=2, rollout_batch_size=8, per_device_train_batch_size=4, num_ppo_epochs=2
    )
    torch.set_num_threads(1)
    whole = ppo.run(_cfg(warm_model, tmp_path / "whole", **kw))
    # the same run in a subprocess, killed with SIGKILL once its second checkpoint is complete
    killed = _cfg(warm_model, tmp_path / "killed", **kw)
    config = _write_config(tmp_path / "killed.yaml", killed)
    proc = subprocess.Popen([sys.executable, "-m", "tulu_kit.ppo", str(config)], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = tmp_path / "killed" / "checkpoints" / "checkpoint-4" / "COMPLETE"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive and marker.exists(), "the run ended before it could be killed after checkpoint-4"
    assert not (tmp_path / "killed" / "model").exists()
    resumed = ppo.run(_cfg(warm_model, tmp_path / "killed", resume=True, **kw))
    assert resumed["train_steps"] == 6
    history = read_jsonl(tmp_path / "killed" / "log_history.jsonl")
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]  # the log of steps 1-4 came from the checkpoint
    a = load_file(Path(whole["model_dir"]) / "model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "model.safetensors")
    assert a.keys() == b.keys()
    for (
        name
    ) in a:  # tolerance 0: every rollout is seeded by (seed, iteration, rank), the optimizer state restored
        assert torch.equal(a[name], b[name]), name


def test_lora_policy_uses_its_base_as_reference_and_saves_merged(warm_model, tmp_path):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    cfg = _cfg(warm_model, tmp_path / "lora", max_steps=2, rollout_batch_size=8, per_device_train_batch_size=4,
               num_ppo_epochs=1, use_lora=True, lora_r=8, lora_target_modules="q_proj,v_proj")  # fmt: skip
    result = ppo.run(cfg)
    history = read_jsonl(tmp_path / "lora" / "log_history.jsonl")
    assert history[0]["kl"] == 0.0 and history[1]["kl"] != 0.0  # adapter on vs off: KL appears after a step
    assert 0 < result["trainable_params"] < result["total_params"]
    merged, base = (
        load_file(Path(result["model_dir"]) / "model.safetensors"),
        load_file(warm_model / "model.safetensors"),
    )
    assert merged.keys() == base.keys()  # adapters merged into plain weights
    assert any(not torch.equal(merged[k], base[k]) for k in base)


def test_reward_model_score_is_the_reward_and_starts_the_value_model(warm_model, tmp_path):
    torch.set_num_threads(1)
    cfg = _cfg(warm_model, tmp_path / "rm", max_steps=1, rollout_batch_size=8, per_device_train_batch_size=4,
               num_ppo_epochs=1, reward_model=str(warm_model), reward_model_multiplier=2.0,
               verification_reward=0.0, non_stop_penalty=False)  # fmt: skip
    ppo.run(cfg)
    (log,) = read_jsonl(tmp_path / "rm" / "log_history.jsonl")
    assert log["rm_score"] != 0.0 and log["score"] == pytest.approx(2.0 * log["rm_score"], rel=1e-5)


# --------------------------------------------------------------------------- the checkpoint protocol, killed

SHORT = dict(max_steps=4, save_steps=2, rollout_batch_size=8, per_device_train_batch_size=4, num_ppo_epochs=1)


@pytest.fixture(scope="module")
def short_whole(warm_model, tmp_path_factory) -> dict:
    """The uninterrupted 4-iteration run every killed-and-resumed run below must end equal to."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("whole") / "ppo"
    return ppo.run(_cfg(warm_model, out, **SHORT))


def _same_weights(result: dict, whole: dict) -> None:
    from safetensors.torch import load_file

    got = load_file(Path(result["model_dir"]) / "model.safetensors")
    want = load_file(Path(whole["model_dir"]) / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)  # bit-exact: seeded rollouts, restored optimizer
    assert result["reward_failures"] == whole["reward_failures"]  # counted over the whole run, across kills


def _marked(out: Path) -> dict[str, bool]:
    return {p.name: (p / "COMPLETE").is_file() for p in sorted((out / "checkpoints").glob("checkpoint-*"))}


def test_another_runs_half_written_checkpoint_is_never_resumed(warm_model, tmp_path, short_whole):
    """Run A is killed after checkpoint-2; run B (another learning rate) starts fresh in the same folder and is
    killed while writing its checkpoint-2. A resumed must not take B's weights with A's optimizer: B's fresh start
    removed A's checkpoints, B's own is unmarked, so A starts over and ends equal to the uninterrupted run. A
    complete checkpoint of B is refused by name."""
    from tests.killed_run import run_killed

    torch.set_num_threads(1)
    out = tmp_path / "ppo"
    a, b = _cfg(warm_model, out, **SHORT), _cfg(warm_model, out, **{**SHORT, "learning_rate": 2e-3})
    assert run_killed("ppo", a, "after-save", 2) == -9 and _marked(out) == {"checkpoint-2": True}
    assert run_killed("ppo", b, "mid-save", 2) == -9 and _marked(out) == {"checkpoint-2": False}
    resumed = ppo.run(_cfg(warm_model, out, resume=True, **SHORT))
    assert resumed["train_steps"] == 4 and [h["step"] for h in read_jsonl(out / "log_history.jsonl")] == [
        1,
        2,
        3,
        4,
    ]
    _same_weights(resumed, short_whole)
    assert run_killed("ppo", b, "after-save", 2) == -9  # now a complete checkpoint of B
    from tulu_kit.checkpoints import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match="learning_rate: 0.002 in the checkpoint, 0.001 now"):
        ppo.run(_cfg(warm_model, out, resume=True, **SHORT))


def test_kills_mid_save_and_in_the_final_save_resume_to_the_uninterrupted_weights(
    warm_model, tmp_path, short_whole
):
    """save_total_limit 1, a checkpoint every iteration: killed while writing checkpoint-3 (checkpoint-2 stays the
    one complete checkpoint), resumed and killed while writing the final model (checkpoint-3 rewritten, marked,
    checkpoint-2 rotated away only then), resumed again: 4 iterations in all, no extra one, the same weights."""
    from tests.killed_run import run_killed

    torch.set_num_threads(1)
    out = tmp_path / "ppo"
    kw = {**SHORT, "save_steps": 1, "save_total_limit": 1}
    assert run_killed("ppo", _cfg(warm_model, out, **kw), "mid-save", 3) == -9
    assert _marked(out) == {"checkpoint-2": True, "checkpoint-3": False}
    assert run_killed("ppo", _cfg(warm_model, out, resume=True, **kw), "final-save") == -9
    assert _marked(out) == {"checkpoint-3": True} and not (out / "model").exists()
    resumed = ppo.run(_cfg(warm_model, out, resume=True, **kw))
    assert resumed["train_steps"] == 4 and [h["step"] for h in read_jsonl(out / "log_history.jsonl")] == [
        1,
        2,
        3,
        4,
    ]
    _same_weights(resumed, short_whole)


def test_non_finite_reward_settings_are_refused(tmp_path):
    for name, value in (("verification_reward", float("nan")), ("reward_model_multiplier", float("inf")),
                        ("penalty_reward_value", float("-inf"))):  # fmt: skip
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            _cfg("m", tmp_path, **{name: value})
    with pytest.raises(ValueError, match="score_placement"):
        _cfg("m", tmp_path, score_placement="bos")


def test_a_non_finite_loss_stops_the_run_naming_the_iteration(tiny_model, tmp_path, monkeypatch):
    real = ppo.ppo_policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(ppo, "ppo_policy_loss", nan_loss)
    cfg = _cfg(tiny_model, tmp_path / "nan", max_steps=2, rollout_batch_size=8, per_device_train_batch_size=4,
               num_ppo_epochs=1)  # fmt: skip
    with pytest.raises(
        FloatingPointError, match="non-finite loss nan .* at iteration 1; the weights were not updated"
    ):
        ppo.run(cfg)
    assert not (tmp_path / "nan" / "model").exists()


def test_trainer_stages_stop_on_a_non_finite_logged_loss():
    from types import SimpleNamespace

    from tulu_kit import training

    cb = training.finite_loss_callback()
    cb.on_log(None, SimpleNamespace(global_step=3), None, logs={"loss": 1.5})
    with pytest.raises(FloatingPointError, match="non-finite loss inf logged at step 7"):
        cb.on_log(None, SimpleNamespace(global_step=7), None, logs={"loss": float("inf")})
