"""PPO stage: RL with verifiable rewards (and/or a reward model), as Tulu 3 ran it (notebook `notebooks/08_ppo.ipynb`).

TRL 1.16 has no PPO (its experimental `PPOTrainer` was removed in 1.13), so this is the kit's own compact loop on
accelerate, after open-instruct's `open_instruct/ppo_vllm_thread_ray_gtrl.py` (commit 9502f163, removed in #1132;
"OI Lnnn" below are its lines) with Tulu 3's settings (`scripts/train/tulu3/ppo_8b.sh`). One iteration:

1. **rollout** (no grad): each process samples one response per prompt of its `rollout_batch_size` prompts from
   the policy (HF `generate`, `temperature`), cuts it after the first EOS, and computes the policy's and the frozen
   reference's per-token log-probs and the value model's per-token values (OI L1150-1250);
2. **reward**: `score = reward_model_multiplier × RM(prompt + response) + verification_reward × verifier(row,
   response)` (OI L1210-1232; the verifier is `tulu_kit.rewards.verifiable_reward`, i.e. the eval scorers); with
   `non_stop_penalty` a response without EOS gets `penalty_reward_value` instead (OI L1271-1281). A response ends
   at its first EOS (kept) or at a pad token sampled before it (OI L1203-1208). Per-token rewards are `-β·kl_t` on
   the response tokens, `kl_t` Schulman's estimator `kl_estimator` (k1 by default; `tulu_kit.losses.kl_penalty`),
   plus the score one column *after* the last response token, where the value model is trained too
   (`score_placement: after_eos`, open-instruct's and TRL's placement, OI L1282-1307); `score_placement: eos`
   puts it on the last token instead (`tulu_kit.losses.score_index` says why one might);
3. **advantage**: GAE with γ, λ on the value model's values (γ 1, λ 0.95) over the value mask (the response,
   plus the score's column), returns = advantages + values, advantages whitened over the batch's response tokens (OI L1313-1327; `tulu_kit.losses.gae`, `masked_whiten`);
4. **update**: `num_ppo_epochs` passes over the rollouts in shuffled mini-batches of
   `per_device_train_batch_size × gradient_accumulation_steps`, each one optimizer step of the clipped policy
   loss (ε `cliprange`) + `vf_coef` × the clipped value loss (`cliprange_value`) (OI L1329-1390).

Models: the policy starts from `model` (SFT or DPO); the reference is a frozen copy of it, or, with `use_lora`,
the same weights with the adapter disabled (no second copy). The value model is an
`AutoModelForSequenceClassification` started from `value_model`, else `reward_model` (OI L723: from the reward
model), else the policy's weights with a fresh scalar head. Policy and value model train together as one module
with one AdamW (as TRL's old `PolicyAndValueWrapper`); their parameters are disjoint, so this equals OI's two
optimizers with the same learning rate, and `max_grad_norm` clips each model's own gradient norm as OI's two DeepSpeed
engines do (under DeepSpeed the kit's one engine clips their joint norm). With `offload_models` the reference
and reward models wait on the CPU while the policy trains (a GPU memory saver; a no-op on CPU).

Launching: `launcher: accelerate` on 1..N processes: DDP (gloo on CPU), or DeepSpeed ZeRO-2 (`deepspeed:
recipes/deepspeed/zero2.json`, Tulu 3's `--deepspeed_stage 2`), or ZeRO-3: policy, value, reference and reward
model are all sharded (the frozen ones in a DeepSpeed engine without optimizer, gathered layer by layer for their
forward), but HF `generate` gathers the whole policy for each rollout (one full copy per process while it
generates, and slow: the reason open-instruct generated with vLLM); `offload_models` has no effect on ZeRO-3
shards. DDP, ZeRO-2 and ZeRO-3 on 2 processes end with the same weights (within 2e-6 on the tiny model, fp32).
Every process seeds its sampling
from (seed, iteration, rank), so a run resumed from a checkpoint (`save_steps`, `resume`) repeats the same
rollouts and ends with the uninterrupted run's weights (`tests/test_ppo.py` kills it at each point of the save).
Checkpoints follow :mod:`tulu_kit.checkpoints`, the protocol of every other stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tulu_kit import checkpoints, launch, models, plots, training
from tulu_kit.config import to_dict
from tulu_kit.io import atomic_write_json, read_json, write_jsonl
from tulu_kit.losses import (
    KL_ESTIMATORS,
    SCORE_PLACEMENTS,
    gae,
    kl_penalty,
    length_mask,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_rewards,
    ppo_value_loss,
    response_lengths,
    value_mask,
)
from tulu_kit.results import write_result
from tulu_kit.training import LoRAFields

logger = logging.getLogger(__name__)
STATE_NAME = "ppo_state.json"
CURVES = ("verifiable_reward", "score", "kl", "response_length", "pg_clipfrac", "vf_loss")


@dataclass
class PPOConfig(LoRAFields):
    """One PPO run: the shared training fields (:class:`tulu_kit.training.TrainingFields`) and PPO's own.

    ``max_steps`` counts PPO iterations (one rollout batch each); without it ``num_train_epochs`` passes over the
    prompts. ``max_length`` bounds prompt + response: longer prompts are dropped (and counted)."""

    model: str = "../runs/lab/dpo/model"  # the policy's start: an SFT or DPO model
    train_file: str = (
        "synthetic_arithmetic"  # RLVR rows {"messages", "ground_truth", "dataset"} (JSONL, Hub id), or
    )
    # "synthetic_arithmetic": the offline toy task (tulu_kit.data.synthetic), synthetic_size rows
    synthetic_size: int = 256  # rows of the synthetic_arithmetic toy task
    out_dir: str = "../runs/lab/ppo"  # final policy in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    # --- models
    reward_model: str = ""  # a reward model (the reward stage's reward_model/); "": verifiable rewards only
    value_model: str = (
        ""  # the value model's start; "": reward_model, else the policy with a fresh scalar head
    )
    offload_models: bool = False  # keep reference and reward model on the CPU outside the rollout (GPU saver)
    # --- rollouts
    rollout_batch_size: int = 16  # prompts per process per iteration (Tulu 3: local_rollout_batch_size 16)
    response_length: int = 53  # new tokens at most per response (Tulu 3: 2048)
    temperature: float = 0.7  # sampling temperature, also applied to the log-probs (Tulu 3: 1.0)
    # --- reward
    reward_model_multiplier: float = (
        1.0  # × the reward model's score (Tulu 3: 0, the RM only starts the value)
    )
    verification_reward: float = 10.0  # × the verifier's pass (1) or share (IFEval) (Tulu 3: 10)
    non_stop_penalty: bool = True  # a response with no EOS within response_length scores penalty_reward_value
    penalty_reward_value: float = -10.0  # that score (Tulu 3: -10)
    # --- PPO
    beta: float = 0.05  # KL penalty β per token (Tulu 3 8B: 0.05)
    kl_estimator: Literal["kl1", "kl2", "kl3"] = "kl1"  # Schulman's k1/k2/k3 (open-instruct default: kl1)
    # where the sequence score sits: after_eos (open-instruct, TRL: one column after the response, the value
    # trained there), or eos (on the last response token; see tulu_kit.losses.score_index for why one might)
    score_placement: Literal["after_eos", "eos"] = "after_eos"
    gamma: float = 1.0  # GAE discount γ
    lam: float = 0.95  # GAE λ
    cliprange: float = 0.2  # policy ratio clip ε
    vf_coef: float = 0.1  # weight of the value loss
    cliprange_value: float = 0.2  # value clip around the rollout's values
    num_ppo_epochs: int = 4  # passes over each rollout batch (open-instruct num_epochs: 4)
    n_samples_logged: int = 4  # rollouts kept per iteration in samples.jsonl (first and last iterations)
    # --- defaults PPO changes (max_steps counts iterations; eval_file and eval_steps are not used)
    learning_rate: float = 3e-7  # peak learning rate (Tulu 3 8B PPO: 3e-7)
    weight_decay: float = 0.01  # AdamW weight decay (open-instruct's PPO: torch's default, 0.01)
    per_device_train_batch_size: int = 2  # rollouts per micro-batch (Tulu 3: 2)
    gradient_accumulation_steps: int = 8  # micro-batches per mini-batch (one optimizer step); Tulu 3: 16 / 2
    max_length: int = 4096  # prompt + response tokens (Tulu 3: 2048 + 2048)

    def __post_init__(self):
        super().__post_init__()
        for name in ("rollout_batch_size", "response_length", "num_ppo_epochs", "synthetic_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        mini = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.rollout_batch_size % mini:
            raise ValueError(f"rollout_batch_size {self.rollout_batch_size} must be a multiple of the mini-batch "
                             f"per_device_train_batch_size × gradient_accumulation_steps = {mini}")  # fmt: skip
        if self.max_length <= self.response_length:
            raise ValueError(f"max_length {self.max_length} leaves no room for a prompt beside "
                             f"response_length {self.response_length}")  # fmt: skip
        for name in ("temperature", "beta", "gamma", "lam", "cliprange", "vf_coef", "cliprange_value"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("reward_model_multiplier", "verification_reward", "penalty_reward_value"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (PPO samples), got {self.temperature}")
        if self.score_placement not in SCORE_PLACEMENTS:
            raise ValueError(
                f"score_placement must be one of {SCORE_PLACEMENTS}, got {self.score_placement!r}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.reward_model_multiplier and not self.reward_model and not self.verification_reward:
            raise ValueError("no reward: set reward_model, or verification_reward > 0")


# --------------------------------------------------------------------------- data


def load_prompts(cfg: PPOConfig, tokenizer) -> tuple[list[dict], int]:
    """RLVR rows (:func:`tulu_kit.training.load_rlvr_rows`: checked, naming file, line and key, before any model
    loads) with their prompt token ids (chat template, generation prompt); returns (rows, dropped as too long)."""
    from tulu_kit.data.templates import encode_chat

    rows, dropped, limit = [], 0, cfg.max_length - cfg.response_length
    for row in training.load_rlvr_rows(cfg):
        ids = encode_chat(tokenizer, training.rlvr_prompt(row), add_generation_prompt=True)
        if len(ids) > limit:
            dropped += 1
            continue
        rows.append({**row, "prompt_ids": ids})
    if not rows:
        raise ValueError(f"{cfg.train_file}: no prompt fits max_length - response_length = {limit} tokens")
    return rows, dropped


def batch_indices(n: int, iteration: int, batch: int, rank: int, world: int, seed: int) -> list[int]:
    """Row indices of this rank's prompts at ``iteration``: epochs of a seeded permutation laid end to end."""
    start = (iteration * world + rank) * batch
    out = []
    for pos in range(start, start + batch):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        out.append(int(perm[i]))
    return out


# --------------------------------------------------------------------------- models


class PolicyAndValue(torch.nn.Module):
    """Policy and value model as one module, so DDP/DeepSpeed wrap, step and checkpoint them together."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy, self.value = policy, value
        self.config = policy.config  # read by accelerate to fill DeepSpeed's "auto" bucket sizes

    def forward(self, input_ids, attention_mask, context: int, temperature: float):
        """Per-token (log-prob of the response token, value of the state before it) for positions context..end."""
        logprobs = per_token_logprobs(self.policy, input_ids, attention_mask, context, temperature)
        return logprobs, token_scores(self.value, input_ids, attention_mask)[:, context - 1 : -1]


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(
        min=0
    )  # left padding: positions start at each row's 0


def per_token_logprobs(model, input_ids, attention_mask, context: int, temperature: float) -> torch.Tensor:
    """log π(token_t | tokens_<t) of the response tokens (columns ``context`` on), logits / temperature (OI L560)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask))
    logits = out.logits[:, context - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, input_ids[:, context:, None]).squeeze(-1)


def token_scores(model, input_ids, attention_mask) -> torch.Tensor:
    """A sequence-classification model's scalar head at every position (OI `get_reward`): values, or the reward
    at the last real token."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)
    ).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


def _disable_dropout(model) -> None:
    """Dropout off (OI L733): the log-probs of the update must match the rollout's for the same weights."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_models(cfg: PPOConfig, pad_id: int):
    """(policy+value module, reference model or None with LoRA, reward model or None)."""
    from transformers import AutoModelForSequenceClassification

    def scalar_model(path):
        m = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
            attn_implementation=models.resolve_attention(cfg.attn_implementation),
        )  # fmt: skip
        m.config.pad_token_id = pad_id
        return m

    policy = training.load_policy(cfg, add_adapters=True)
    value = scalar_model(cfg.value_model or cfg.reward_model or cfg.model)  # fresh head: seeded by cfg.seed
    reference = None if cfg.use_lora else models.load_model(cfg.model, cfg.dtype, cfg.attn_implementation)
    use_rm = bool(cfg.reward_model and cfg.reward_model_multiplier)
    reward_model = scalar_model(cfg.reward_model) if use_rm else None
    for m in (policy, value, reference, reward_model):
        if m is not None:
            _disable_dropout(m)
    for m in (reference, reward_model):
        if m is not None:
            m.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:
        value.gradient_checkpointing_enable()
    return PolicyAndValue(policy, value), reference, reward_model


def _sharded(model) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())  # DeepSpeed ZeRO-3 parameters


def zero3_frozen(model, accelerator):
    """Under ZeRO-3 a frozen model (reference, reward) loads as shards (``zero.Init``): give it a DeepSpeed engine
    without optimizer, whose hooks gather each layer's weights for its forward (as TRL's ``prepare_deepspeed``).
    Returns the model (with the hooks); a no-op for any other setup."""
    plugin = accelerator.state.deepspeed_plugin
    if model is None or plugin is None or plugin.zero_stage != 3:
        return model
    import copy

    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    return deepspeed.initialize(model=model, config=config)[0].module.eval()


@contextlib.contextmanager
def on_device(model, device, offload: bool):
    """``model`` on ``device`` inside the block; with ``offload`` it goes back to the CPU after (GPU only; not
    under ZeRO-3, whose shards stay where DeepSpeed put them)."""
    if model is None or not offload or device.type == "cpu" or _sharded(model):
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
        torch.cuda.empty_cache()


@contextlib.contextmanager
def gathered(model):
    """Full weights inside the block under DeepSpeed ZeRO-3 (for ``generate``); a no-op otherwise."""
    if not _sharded(model):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        yield


# --------------------------------------------------------------------------- one iteration


@torch.no_grad()
def rollout(cfg: PPOConfig, accelerator, model, reference, reward_model, tokenizer, rows: list[dict]) -> dict:
    """Sample responses to ``rows``, score them and compute per-token rewards, advantages and returns."""
    from transformers import GenerationConfig

    from tulu_kit import rewards

    device, eos, pad = accelerator.device, tokenizer.eos_token_id, tokenizer.pad_token_id
    query, query_mask = models.pad_batch([r["prompt_ids"] for r in rows], pad, left=True)
    query, query_mask, context = query.to(device), query_mask.to(device), query.shape[1]
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                           max_new_tokens=cfg.response_length, eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    with gathered(unwrapped.policy):
        out = unwrapped.policy.generate(input_ids=query, attention_mask=query_mask, generation_config=gen)
    response = out[:, context:]
    # the response ends at its first EOS (kept), or at a pad sampled before it (OI L1203-1208); the rest is padding
    lengths, has_eos = response_lengths(response, eos, pad)
    mask = length_mask(lengths, response.shape[1]).bool()
    response = response.masked_fill(~mask, pad)
    ids, attn = torch.cat([query, response], 1), torch.cat([query_mask, mask.long()], 1)
    logprobs, values, ref_logprobs, rm_scores = [], [], [], []
    step = cfg.per_device_train_batch_size
    with (
        on_device(reference, device, cfg.offload_models),
        on_device(reward_model, device, cfg.offload_models),
    ):
        for s in range(0, len(rows), step):
            sl = slice(s, s + step)
            lp, v = model(ids[sl], attn[sl], context, cfg.temperature)
            logprobs.append(lp)
            values.append(v)
            if reference is None:  # LoRA: the reference is the base, adapter disabled
                with unwrapped.policy.disable_adapter():
                    ref_logprobs.append(
                        per_token_logprobs(unwrapped.policy, ids[sl], attn[sl], context, cfg.temperature)
                    )
            else:
                ref_logprobs.append(
                    per_token_logprobs(reference, ids[sl], attn[sl], context, cfg.temperature)
                )
            if reward_model is not None:
                last = attn[sl].shape[1] - 1 - attn[sl].flip(-1).argmax(-1)
                scores = token_scores(reward_model, ids[sl], attn[sl])
                rm_scores.append(scores[torch.arange(scores.shape[0]), last])
    logprobs, values, ref_logprobs = torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs)
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    verified = torch.tensor([rewards.verifiable_reward(r, t) for r, t in zip(rows, texts)], device=device)
    score = cfg.verification_reward * verified
    rm = torch.cat(rm_scores) if rm_scores else torch.zeros_like(score)
    score = score + cfg.reward_model_multiplier * rm
    if cfg.non_stop_penalty:
        score = torch.where(has_eos, score, torch.full_like(score, cfg.penalty_reward_value))
    fmask, width = mask.float(), response.shape[1]
    vmask = value_mask(lengths, width, cfg.score_placement)  # the response (+ the score's column: after_eos)
    kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * fmask
    token_rewards, non_score = ppo_rewards(score, kl, lengths, cfg.beta, cfg.score_placement)
    values = values * vmask
    raw_advantages, returns = gae(token_rewards, values, vmask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(raw_advantages, fmask)
    stats = {
        "verifiable_reward": verified.mean(),
        "score": score.mean(),
        "rm_score": rm.mean(),
        "kl": kl.sum(1).mean(),
        "non_score_reward": non_score.mean(),
        "rlhf_reward": (score + non_score).mean(),
        "response_length": fmask.sum(1).mean(),
        "non_stop_rate": (~has_eos).float().mean(),
        "entropy": -masked_mean(logprobs, fmask, 1).mean(),  # per-token, of the sampled tokens
    }
    samples = [{"prompt": tokenizer.decode(r["prompt_ids"], skip_special_tokens=True), "response": t,
                "ground_truth": r["ground_truth"], "verifiable_reward": float(v), "score": float(sc)}
               for r, t, v, sc in zip(rows, texts, verified, score)][: cfg.n_samples_logged]  # fmt: skip
    batch = dict(ids=ids, attn=attn, mask=fmask, value_mask=vmask, logprobs=logprobs, values=values,
                 advantages=advantages, returns=returns, rewards=token_rewards, raw_advantages=raw_advantages,
                 kl=kl)  # fmt: skip
    return {"batch": batch, "context": context, "stats": stats, "samples": samples}


def update(
    cfg: PPOConfig, accelerator, model, optimizer, scheduler, data: dict, generator, step: int = 0
) -> dict:
    """``num_ppo_epochs`` passes over one rollout batch in shuffled mini-batches; one optimizer step each."""
    b, context = data["batch"], data["context"]
    n, micro = b["ids"].shape[0], cfg.per_device_train_batch_size
    keys = ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl", "ratio")
    sums = dict.fromkeys(keys, 0.0)
    count = 0
    model.train()
    for _ in range(cfg.num_ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, micro):
            i = order[s : s + micro].to(b["ids"].device)
            with accelerator.accumulate(model):
                logprobs, values = model(b["ids"][i], b["attn"][i], context, cfg.temperature)
                mask, vmask = b["mask"][i], b["value_mask"][i]
                pg_loss, pg = ppo_policy_loss(
                    logprobs, b["logprobs"][i], b["advantages"][i], mask, cfg.cliprange
                )
                vf_loss, vf = ppo_value_loss(values * vmask, b["values"][i], b["returns"][i], vmask,
                                             cfg.cliprange_value)  # fmt: skip
                loss = pg_loss + cfg.vf_coef * vf_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"ppo: non-finite loss {loss.item()} (policy {pg_loss.item()}, value {vf_loss.item()}) "
                        f"at iteration {step}; the weights were not updated"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    inner = accelerator.unwrap_model(model)  # each model's own norm, as OI's two engines clip
                    for part in (inner.policy, inner.value):  # (DeepSpeed: its config clips the joint norm)
                        accelerator.clip_grad_norm_([p for p in part.parameters() if p.requires_grad],
                                                    cfg.max_grad_norm)  # fmt: skip
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            for key, value in zip(keys, (pg_loss, vf_loss, pg["clipfrac"], vf["clipfrac"], pg["approxkl"],
                                         pg["ratio"])):  # fmt: skip
                sums[key] += float(value.detach())
            count += 1
    return {k: v / count for k, v in sums.items()}


def inspect_rollout(cfg: PPOConfig, model: str = "", n: int = 4) -> dict:
    """One rollout of ``n`` prompts in this process, for notebook 08's by-hand cell: the policy has the weights of
    ``model`` (a trained policy; default ``cfg.model``), the reference is ``cfg.model``. ``batch`` holds per-token
    ``rewards``, ``values``, ``mask`` (response tokens), ``value_mask`` (+ the score's column), ``raw_advantages``
    (GAE before whitening), ``advantages`` and ``returns``; ``samples`` the decoded responses."""
    from dataclasses import replace

    from transformers import set_seed

    cfg = replace(cfg, rollout_batch_size=n, per_device_train_batch_size=n, gradient_accumulation_steps=1,
                  offload_models=False, n_samples_logged=n)  # fmt: skip
    set_seed(cfg.seed)
    accelerator = _accelerator(cfg)
    tokenizer = training.load_tokenizer(cfg)
    rows, _ = load_prompts(cfg, tokenizer)
    policy_value, reference, reward_model = load_models(cfg, tokenizer.pad_token_id)
    if model and not cfg.use_lora:
        policy_value.policy.load_state_dict(models.load_model(model, cfg.dtype).state_dict())
    for m in (policy_value, reference, reward_model):
        if m is not None:
            m.to(accelerator.device)
    data = rollout(cfg, accelerator, policy_value, reference, reward_model, tokenizer, rows[:n])
    return data


def _mean_over_ranks(accelerator, stats: dict) -> dict:
    keys = sorted(stats)
    local = torch.tensor([float(stats[k]) for k in keys], device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(local, reduction="mean").tolist()))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(cfg: PPOConfig, accelerator, iteration: int, state: dict) -> Path:
    """``checkpoint-<iteration>`` by :mod:`tulu_kit.checkpoints`' protocol: a stale folder of that step removed,
    every rank's part (model, optimizer, scheduler, RNG; the loop's state), then config, marker and rotation."""
    folder = Path(cfg.out_dir) / "checkpoints" / f"checkpoint-{iteration}"
    checkpoints.begin_save(folder)
    accelerator.save_state(str(folder))  # every rank
    if accelerator.is_main_process:
        atomic_write_json(folder / STATE_NAME, state)
    checkpoints.complete(folder, to_dict(cfg), iteration, cfg.save_total_limit)
    return folder


# --------------------------------------------------------------------------- the stage


def _accelerator(cfg: PPOConfig):
    from accelerate import Accelerator, PartialState

    cpu = not torch.cuda.is_available()
    if cpu and cfg.deepspeed:  # DeepSpeed on CPU: without a backend accelerate counts one process
        PartialState(backend="gloo")
    # cpu=True forms the gloo group of several CPU processes, but makes accelerate ignore DeepSpeed
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision="bf16" if cfg.bf16 else "no", cpu=cpu and not cfg.deepspeed)  # fmt: skip
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:  # no DataLoader is prepared, so DeepSpeed's "auto" batch sizes are set here
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds["train_batch_size"] = (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
                                  * accelerator.num_processes)  # fmt: skip
        ds["gradient_clipping"] = cfg.max_grad_norm
    return accelerator


def total_iterations(cfg: PPOConfig, n_prompts: int, world: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * n_prompts / (cfg.rollout_batch_size * world)))


def train(cfg: PPOConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and the result."""
    from transformers import get_scheduler, set_seed

    if callbacks:
        raise ValueError("the ppo stage runs its own loop: it takes no Trainer callbacks")
    out = Path(cfg.out_dir)
    accelerator = _accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)  # the value head's init: the same on every rank
    from tulu_kit import rewards

    rewards.failure_counts(reset=True)  # odd outputs (no number, ...) scored 0, counted for the result

    # ---- data and models
    tokenizer = training.load_tokenizer(cfg)
    rows, dropped = load_prompts(cfg, tokenizer)
    model, reference, reward_model = load_models(cfg, tokenizer.pad_token_id)
    iterations = total_iterations(cfg, len(rows), world)
    mini_batches = cfg.rollout_batch_size // (
        cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    )
    optimizer = torch.optim.AdamW(  # OI L692/L740: torch's AdamW defaults (eps 1e-8, weight decay 0.01)
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
    )
    optimizer_steps = iterations * cfg.num_ppo_epochs * mini_batches  # OI L693
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, int(cfg.warmup_ratio * optimizer_steps),
                              optimizer_steps)  # fmt: skip
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    reference, reward_model = zero3_frozen(reference, accelerator), zero3_frozen(reward_model, accelerator)
    for frozen in (reference, reward_model):
        if frozen is not None and not cfg.offload_models and not _sharded(frozen):
            frozen.to(accelerator.device)

    # ---- resume from the last complete checkpoint of this run
    state = {"iteration": 0, "log_history": [], "samples": [], "reward_failures": {}}
    folder = out / "checkpoints"
    checkpoint = checkpoints.last_complete_checkpoint(folder, to_dict(cfg)) if cfg.resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
        accelerator.load_state(str(checkpoint))
        state = read_json(checkpoint / STATE_NAME)
        rewards.FAILURES.update(state.get("reward_failures", {}))  # the counts of the iterations before
    else:
        checkpoints.fresh_start(folder)  # another run's checkpoints go before this run writes any

    # ---- the loop: rollout -> reward -> advantage -> update
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(range(state["iteration"], iterations), desc="ppo", disable=not accelerator.is_main_process)
    for it in bar:
        torch.manual_seed(cfg.seed * 100_003 + it * 1_009 + rank)  # sampling: the same after a resume
        t0 = time.perf_counter()
        idx = batch_indices(len(rows), it, cfg.rollout_batch_size, rank, world, cfg.seed)
        data = rollout(cfg, accelerator, model, reference, reward_model, tokenizer, [rows[i] for i in idx])
        t1 = time.perf_counter()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + it * 1_009 + rank)
        losses = update(cfg, accelerator, model, optimizer, scheduler, data, generator, step=it + 1)
        t2 = time.perf_counter()
        log = _mean_over_ranks(
            accelerator, {**data["stats"], **losses, "rollout_s": t1 - t0, "train_s": t2 - t1}
        )
        log = {"step": it + 1, **log, "loss": log["pg_loss"] + cfg.vf_coef * log["vf_loss"],
               "learning_rate": scheduler.get_last_lr()[0]}  # fmt: skip
        state["log_history"].append(log)
        if it == 0 or it == iterations - 1:
            state["samples"] += [{"step": it + 1, **s} for s in data["samples"]]
        state["iteration"] = it + 1
        state["reward_failures"] = rewards.failure_counts()
        if accelerator.is_main_process and (it + 1) % cfg.logging_steps == 0:
            logger.info("step %d: %s", it + 1, {k: round(v, 4) for k, v in log.items() if k in CURVES})
            bar.set_postfix(reward=round(log["verifiable_reward"], 3), kl=round(log["kl"], 3))
        if cfg.save_steps and (it + 1) % cfg.save_steps == 0 and it + 1 < iterations:
            save_checkpoint(cfg, accelerator, it + 1, state)
    runtime = time.perf_counter() - start
    checksums = weight_checksums(accelerator, model)  # one per rank: equal when the ranks stayed in sync
    trainable, total = models.count_parameters(accelerator.unwrap_model(model).policy)  # before LoRA merges

    # ---- save: the policy (adapters merged), curves, samples, result
    model_dir = save_policy(cfg, accelerator, model, tokenizer)
    return finish(
        cfg,
        accelerator,
        model_dir,
        state,
        runtime,
        n_prompts=len(rows),
        dropped=dropped,
        rank_checksums=checksums,
        trainable_params=trainable,
        total_params=total,
    )


def weight_checksums(accelerator, model) -> list[str]:
    """A SHA-256 of this rank's policy and value weights (ZeRO-3: gathered), one per rank."""
    import hashlib

    from accelerate.utils import gather_object

    digest, unwrapped = hashlib.sha256(), accelerator.unwrap_model(model)
    with gathered(unwrapped):  # ZeRO-3: the full weights on every rank
        for name, param in unwrapped.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return gather_object([digest.hexdigest()[:16]])


def save_policy(cfg: PPOConfig, accelerator, model, tokenizer) -> Path:
    """The trained policy to ``<out_dir>/model`` (LoRA merged into its base), atomically; every rank calls it."""
    state_dict = accelerator.get_state_dict(model)  # ZeRO-3: gathered from every rank
    target = Path(cfg.out_dir) / "model"
    main = accelerator.is_main_process
    with launch.atomic_dir(target, main) as tmp:
        if main:
            policy = accelerator.unwrap_model(model).policy
            if cfg.use_lora:
                policy.merge_and_unload().save_pretrained(tmp)
            else:
                own = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
                policy.save_pretrained(tmp, state_dict=own)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / checkpoints.CONFIG_NAME, to_dict(cfg))
    accelerator.wait_for_everyone()
    return target


def finish(cfg: PPOConfig, accelerator, model_dir: Path, state: dict, runtime_s: float, **numbers) -> dict:
    """Rank 0 writes log_history.jsonl, samples.jsonl, config.json, metrics.png and the result (metrics.json)."""
    from tulu_kit import rewards

    out, history = Path(cfg.out_dir), state["log_history"]
    first, last = (history[0], history[-1]) if history else ({}, {})
    steps = state["iteration"]
    fields = dict(
        train_steps=steps, first_loss=first.get("loss"), last_loss=last.get("loss"),
        **training.reward_summary([h["verifiable_reward"] for h in history], [h["kl"] for h in history]),
        score_first=first.get("score"), score_last=last.get("score"),
        rollout_share=(sum(h["rollout_s"] for h in history) / max(sum(h["rollout_s"] + h["train_s"]
                       for h in history), 1e-9)) if history else None,
        world_size=accelerator.num_processes,
        peak_memory_mb=round(training.peak_memory_mb(), 1), train_runtime_s=round(runtime_s, 3),
        steps_per_second=round(len(history) / runtime_s, 4) if runtime_s > 0 and history else 0.0,
        zero_stage=accelerator.state.deepspeed_plugin.zero_stage if accelerator.state.deepspeed_plugin else 0,
        kl_estimator=cfg.kl_estimator, reward_failures=rewards.failure_counts(), **numbers,
    )  # fmt: skip
    result = {"stage": "ppo", "model_dir": str(model_dir), **fields}
    if accelerator.is_main_process:
        write_jsonl(out / "log_history.jsonl", history)
        write_jsonl(out / "samples.jsonl", state["samples"])
        atomic_write_json(out / "config.json", to_dict(cfg))
        plot_curves(history, out / "metrics.png")
        result = write_result(out, "ppo", model_dir, **fields)
    accelerator.wait_for_everyone()
    return result


def plot_curves(history: list[dict], path: str | Path | None = None):
    """Reward, score, KL, response length, clip fraction and value loss over iterations (notebook 08)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.2 * len(CURVES), 2.8))
    steps = [h["step"] for h in history]
    for ax, key in zip(axes, CURVES):
        ax.plot(steps, [h.get(key, float("nan")) for h in history])
        ax.set_title(key)
        ax.set_xlabel("iteration")
    fig.tight_layout()
    if path is not None:
        plots.save_png(fig, path, dpi=100)
    return fig


def run(cfg: PPOConfig, callbacks=None) -> dict:
    """The stage: train here (`launcher="none"`) or launch `train` on `num_processes` processes."""
    return training.run_stage(cfg, "tulu_kit.ppo", train, callbacks)


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: `python -m tulu_kit.ppo CONFIG.yaml`."""
    return training.worker_main(PPOConfig, train, argv, callbacks)


if __name__ == "__main__":
    sys.exit(main())
