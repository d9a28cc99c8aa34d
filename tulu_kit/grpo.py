"""GRPO stage: RL with verifiable rewards on TRL's ``GRPOTrainer`` (notebook ``notebooks/09_grpo.ipynb``).

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300): for each prompt sample a
group of G completions, score each with a verifiable reward r_i (:mod:`tulu_kit.rewards`: the eval scorers), and
use the group-normalised advantage of every token of completion i

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + 1e-4)         (scale_rewards: "group"; "batch": std of the
                                                                   whole batch; "none": no division, Dr. GRPO)

in the clipped objective  min(ρ_t A_i, clip(ρ_t, 1-ε, 1+ε_high) A_i) − β KL_t,  with ρ_t = π_θ/π_old per token and
KL_t Schulman's k3 estimator  exp(q−p) − (q−p) − 1  against the frozen reference (β = 0: no reference model).
``loss_type`` picks how token losses are averaged (TRL's names): ``grpo`` (per sequence, then over sequences),
``dr_grpo`` (over a constant: max_completion_length), ``dapo`` (over all tokens of the accumulated batch), ``bnpo``
(over the tokens of the local batch), ``cispo`` (clipped importance weights).

Generation (``generation``): ``hf`` samples with ``model.generate``; ``vllm`` with vLLM, in the training
processes (``vllm_mode: colocate``) or from a ``trl vllm-serve`` server (``server``: several nodes, README);
``auto`` takes vLLM when it is installed and a GPU is present, else ``hf``. ``run(cfg)`` reads top to bottom:
rows checked, prompts tokenized and filtered by length, the trainer built, trained, the model saved, the result.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tulu_kit import plots, rewards, training
from tulu_kit.training import TOY_TASK, LoRAFields

logger = logging.getLogger(__name__)

CURVES = ("reward", "kl", "completions/mean_length", "clip_ratio/region_mean", "entropy", "reward_std")


@dataclass
class GRPOConfig(LoRAFields):
    """One GRPO run: the shared training fields (:class:`tulu_kit.training.TrainingFields`), LoRA's, and GRPO's."""

    model: str = "../runs/lab/dpo/model"  # the policy to start from (SFT or DPO model); also the reference
    train_file: str = (
        TOY_TASK  # JSONL of RLVR rows {messages, ground_truth, dataset}, Hub id, or the toy task
    )
    out_dir: str = "../runs/lab/grpo"  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    synthetic_size: int = 512  # prompts of the toy task (train_file: synthetic_arithmetic)
    max_train_samples: int = 0  # keep the first N prompts; 0: all
    # --- rollouts
    num_generations: int = 16  # group size G: completions per prompt (Tulu 3.1: 16)
    max_completion_length: int = 2048  # new tokens per completion (Tulu 3.1: 2048)
    temperature: float = 1.0  # sampling temperature (Tulu 3.1: 1.0)
    top_p: float = 1.0  # nucleus sampling
    generation: Literal["auto", "hf", "vllm"] = "auto"  # hf: model.generate; auto: vllm if there and a GPU
    vllm_mode: Literal["colocate", "server"] = "colocate"  # vLLM inside training, or a `trl vllm-serve`
    vllm_server_host: str = "0.0.0.0"  # server mode: the host running `trl vllm-serve`
    vllm_server_port: int = 8000  # server mode: its port
    vllm_gpu_memory_utilization: float = 0.3  # colocate mode: share of each GPU vLLM may hold
    optimizer_steps_per_rollout: int = (
        1  # optimizer steps each generated batch is split into (open-instruct: 2)
    )
    # --- the algorithm
    algorithm: Literal["grpo", "rloo"] = "grpo"  # rloo: TRL's RLOOTrainer (leave-one-out baseline)
    # --- rewards and advantages
    reward_scale: float = 1.0  # multiplies the verifiable reward (open-instruct: verification_reward 10)
    non_stop_penalty: bool = (
        False  # a completion cut at max_completion_length (no EOS) scores penalty_reward_value
    )
    penalty_reward_value: float = 0.0  # that score (Tulu 3.1 GRPO: 0.0, i.e. truncated answers earn nothing)
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divide advantages by the group/batch std
    # --- the policy loss (TRL's GRPOTrainer)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo"] = "dapo"  # token-loss averaging
    beta: float = 0.01  # KL coefficient β against the reference (Tulu 3.1: 0.01; 0: no reference model)
    epsilon: float = 0.2  # clip range ε of the ratio
    epsilon_high: float = 0.0  # upper clip ε_high (DAPO: 0.28); 0: same as epsilon
    num_iterations: int = 1  # passes over each generated batch (μ)
    # TRL 1.16 multiplies the KL term by the importance ratio π_θ/π_old (DeepSeek-V3.2's unbiased KL gradient; it
    # changes the gradient even on-policy); false: β·KL_t as GRPO's paper and open-instruct write it. GRPO only.
    use_bias_correction_kl: bool = True
    mask_truncated_completions: bool = False  # drop completions cut at max_completion_length from the loss
    log_completions: bool = True  # write every step's prompts, completions, rewards, advantages (parquet)
    # --- defaults GRPO changes
    learning_rate: float = 5e-7  # peak learning rate (Tulu 3.1 8B GRPO: 5e-7)
    gradient_accumulation_steps: int = 16  # micro-batches per step: prompts per step × G / processes / batch

    def __post_init__(self):
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be at least 2 (a group), got {self.num_generations}")
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes
        if per_step * self.optimizer_steps_per_rollout % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size × gradient_accumulation_steps × num_processes = {per_step} "
                f"completions per step must be a multiple of num_generations {self.num_generations} (whole groups)"
            )
        for name in ("beta", "reward_scale", "epsilon", "epsilon_high", "temperature", "top_p"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}"
            )
        if self.max_completion_length < 1 or self.max_completion_length >= self.max_length:
            raise ValueError(f"max_completion_length must be in [1, max_length {self.max_length}), "
                             f"got {self.max_completion_length}")  # fmt: skip
        if self.algorithm == "rloo" and self.scale_rewards == "group":
            raise ValueError(
                "algorithm rloo with scale_rewards group: TRL 1.16's RLOOTrainer can only normalise advantages over "
                "the whole batch (normalize_advantages), not per group; set scale_rewards: batch (that) or none"
            )
        if self.algorithm == "rloo" and not self.use_bias_correction_kl:
            raise ValueError(
                "use_bias_correction_kl is a GRPO setting: RLOO puts the KL in the reward; leave it true"
            )
        if not math.isfinite(self.penalty_reward_value):
            raise ValueError(f"penalty_reward_value must be a finite number, got {self.penalty_reward_value}")
        if self.optimizer_steps_per_rollout < 1:
            raise ValueError(
                f"optimizer_steps_per_rollout must be at least 1, got {self.optimizer_steps_per_rollout}"
            )
        if self.num_iterations < 1 or self.synthetic_size < 1 or self.max_train_samples < 0:
            raise ValueError("num_iterations and synthetic_size must be >= 1, max_train_samples >= 0")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )

    @property
    def prompts_per_step(self) -> int:
        return (
            self.per_device_train_batch_size
            * self.gradient_accumulation_steps
            * self.num_processes
            // (self.num_generations)
        )


# --------------------------------------------------------------------------- data


def load_rows(cfg: GRPOConfig) -> list[dict]:
    """The RLVR rows to train on, checked before any work (:func:`tulu_kit.training.load_rlvr_rows`)."""
    return training.load_rlvr_rows(cfg)


def prompt_dataset(rows: list[dict], tokenizer, max_prompt_tokens: int):
    """TRL's conversational prompt dataset (``prompt``, ``ground_truth``, ``dataset``), without prompts longer
    than ``max_prompt_tokens`` (open-instruct drops them too); returns (dataset, number dropped)."""
    from datasets import Dataset

    kept = []
    for row in rows:
        messages = training.rlvr_prompt(row)
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = ids if isinstance(ids, list) else ids["input_ids"]  # transformers 5: a BatchEncoding
        if len(ids) <= max_prompt_tokens:
            gt = row["ground_truth"]  # one Arrow type for the column: mappings and lists travel as JSON text
            kept.append({"prompt": messages, "ground_truth": gt if isinstance(gt, str) else json.dumps(gt),
                         "dataset": str(row["dataset"]).lower()})  # fmt: skip
    if not kept:
        raise ValueError(
            f"every prompt is longer than max_length - max_completion_length = {max_prompt_tokens}"
        )
    return Dataset.from_list(kept), len(rows) - len(kept)


# --------------------------------------------------------------------------- trainer


def use_vllm(cfg: GRPOConfig) -> bool:
    """Whether rollouts come from vLLM: ``generation: vllm`` (vLLM must be installed), or ``auto`` on a GPU."""
    import importlib.util

    import torch

    installed = importlib.util.find_spec("vllm") is not None
    if cfg.generation == "vllm" and not installed:
        raise RuntimeError(
            "generation: vllm, but vLLM is not installed: pip install vllm (a CUDA GPU machine; TRL 1.16 supports "
            "vllm 0.22-0.31), or set generation: hf (model.generate) or auto"
        )
    if cfg.generation == "vllm" and cfg.vllm_mode == "colocate" and not torch.cuda.is_available():
        raise RuntimeError("generation: vllm with vllm_mode: colocate needs a CUDA GPU; set generation: hf")
    return cfg.generation == "vllm" or (cfg.generation == "auto" and installed and torch.cuda.is_available())


def trl_args(cfg: GRPOConfig, has_eval: bool = False):
    """Our config -> TRL's GRPOConfig, or RLOOConfig for ``algorithm: rloo`` (TrainingArguments)."""
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import RLOOConfig

    vllm = use_vllm(cfg)
    if cfg.algorithm == "rloo":  # RLOO's advantage is r_i minus the mean of the other G-1; no loss_type
        own = dict(normalize_advantages=cfg.scale_rewards == "batch")  # "group" is refused by the config
    else:
        own = dict(loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
                   use_bias_correction_kl=cfg.use_bias_correction_kl)  # fmt: skip
    return training.training_arguments(
        cfg,
        RLOOConfig if cfg.algorithm == "rloo" else TRLGRPOConfig,
        has_eval,
        **own,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high or None,
        num_iterations=cfg.num_iterations,
        # one generated batch feeds optimizer_steps_per_rollout optimizer steps (open-instruct's num_mini_batches)
        steps_per_generation=cfg.gradient_accumulation_steps * cfg.optimizer_steps_per_rollout,
        mask_truncated_completions=cfg.mask_truncated_completions,
        log_completions=cfg.log_completions,
        num_completions_to_print=0,
        use_vllm=vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_max_model_length=cfg.max_length if vllm else None,
    )


def reward_funcs(cfg: GRPOConfig, stop_ids: set[int]) -> list:
    """The verifiable reward × ``reward_scale`` (:func:`tulu_kit.rewards.trl_reward_funcs`); with
    ``non_stop_penalty`` a completion cut at max_completion_length (its last token neither EOS nor pad: TRL's
    test for ``mask_truncated_completions``) scores ``penalty_reward_value`` instead, as open-instruct's
    ``--non_stop_penalty`` (grpo_vllm_thread_ray_gtrl.py L1207-1210 at 686a521a)."""
    (verifiable,) = rewards.trl_reward_funcs(cfg.reward_scale)
    if not cfg.non_stop_penalty:
        return [verifiable]

    def penalised(prompts, completions, completion_ids, **kwargs) -> list[float]:
        scores = verifiable(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        return [
            s if ids and ids[-1] in stop_ids else cfg.penalty_reward_value
            for s, ids in zip(scores, completion_ids)
        ]

    penalised.__name__ = verifiable.__name__
    return [penalised]


def build_trainer(cfg: GRPOConfig, callbacks=None, trainer_cls=None):
    """Tokenizer, prompt dataset, policy and TRL's ``GRPOTrainer`` (``RLOOTrainer``, or ``trainer_cls``) for ``cfg``;
    returns (trainer, info)."""
    from trl import GRPOTrainer, RLOOTrainer

    rows = load_rows(cfg)
    tokenizer = training.load_tokenizer(cfg)
    dataset, dropped = prompt_dataset(rows, tokenizer, cfg.max_length - cfg.max_completion_length)
    args = trl_args(cfg)  # before the model: under ZeRO-3 it shards while loading
    model = training.load_policy(cfg)
    trainer_cls = trainer_cls or (RLOOTrainer if cfg.algorithm == "rloo" else GRPOTrainer)
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs(cfg, {tokenizer.eos_token_id, tokenizer.pad_token_id}),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=training.lora_config(cfg),  # LoRA: the reference is the base with the adapter disabled
        callbacks=training.callbacks(cfg, callbacks),
    )
    info = {
        "n_prompts": len(dataset),
        "dropped_long_prompts": dropped,
        "generation": "vllm" if args.use_vllm else "hf",
    }
    return trainer, info


# --------------------------------------------------------------------------- curves, rollouts, advantages


def history_table(log_history: list[dict]):
    """One row per logged step: reward, KL, completion length, clip ratio, entropy, loss, ..."""
    import pandas as pd

    df = pd.DataFrame([h for h in log_history if "reward" in h or "loss" in h])
    return df.groupby("step", as_index=False).first() if "step" in df else df


def plot_curves(log_history: list[dict], path: str | Path | None = None):
    """Reward, KL, mean completion length, clip ratio, entropy and reward std over steps."""
    import matplotlib.pyplot as plt

    df = history_table(log_history)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(3.3 * len(CURVES), 3.0))
    for ax, key in zip(axes, CURVES):
        if key in df:
            ax.plot(df["step"], df[key], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    if path is not None:
        plots.save_png(fig, path, dpi=110)
    return fig


def rollouts(out_dir: str | Path):
    """Every logged rollout (step, prompt, completion, reward, advantage) from ``log_completions``' parquet files."""
    import pandas as pd

    files = sorted((Path(out_dir) / "checkpoints" / "completions").glob("completions_*.parquet"))
    if not files:
        return pd.DataFrame(columns=["step", "prompt", "completion", "verifiable", "advantage"])
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    df["prompt"] = [_last_content(p) for p in df["prompt"]]
    df["completion"] = [_last_content(c) for c in df["completion"]]
    return df


def _last_content(x) -> str:
    if isinstance(x, str):
        return x
    return str(list(x)[-1]["content"]) if len(x) else ""


def group_table(df, num_generations: int, step: int | None = None, group: int | None = None):
    """One group of G rollouts of a logged step: prompt, completion, reward, advantage. By default the first group
    whose rewards disagree (so its advantages are not all zero), from the earliest step that has one; else the
    first group of the first step."""
    steps = [step] if step is not None else sorted(int(s) for s in df["step"].unique())
    for s in steps:
        rows = df[df["step"] == s].reset_index(drop=True)
        for g in [group] if group is not None else range(len(rows) // num_generations):
            one = rows.iloc[g * num_generations : (g + 1) * num_generations]
            if group is not None or one["verifiable"].nunique() > 1:
                return one
    rows = df[df["step"] == steps[0]].reset_index(drop=True)
    return rows.iloc[:num_generations]


# --------------------------------------------------------------------------- run


def reward_curve(log_history: list[dict]) -> dict:
    """:func:`tulu_kit.training.reward_summary` of the logged mean reward and KL."""
    return training.reward_summary([h["reward"] for h in log_history if h.get("reward") is not None],
                                   [h["kl"] for h in log_history if h.get("kl") is not None])  # fmt: skip


FAILURES_NAME = "reward_failures.json"


def failures_callback():
    """Writes the reward-failure counts into each checkpoint (before the Trainer saves it and before its COMPLETE
    marker), so that a resumed run reports the whole run's counts."""
    from transformers import TrainerCallback

    from tulu_kit.io import atomic_write_json

    class RewardFailures(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                atomic_write_json(folder / FAILURES_NAME, rewards.failure_counts())

    return RewardFailures()


def resumed_failures(cfg: GRPOConfig) -> dict:
    """The reward-failure counts saved with the checkpoint this run resumes from (empty when none)."""
    from tulu_kit import checkpoints
    from tulu_kit.config import to_dict
    from tulu_kit.io import read_json

    folder = Path(cfg.out_dir) / "checkpoints"
    found = checkpoints.last_complete_checkpoint(folder, to_dict(cfg)) if cfg.resume else None
    return read_json(found / FAILURES_NAME) if found and (found / FAILURES_NAME).is_file() else {}


def train(cfg: GRPOConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and the result."""
    rewards.failure_counts(reset=True)
    rewards.FAILURES.update(resumed_failures(cfg))
    trainer, info = build_trainer(cfg, [failures_callback(), *(callbacks or [])])
    runtime = training.fit(trainer, cfg)
    model_dir = training.save_model(trainer, cfg)
    if trainer.accelerator.is_main_process:
        plot_curves(trainer.state.log_history, Path(cfg.out_dir) / "metrics.png")
    return training.finish(
        trainer, cfg, "grpo", model_dir, runtime, algorithm=cfg.algorithm, loss_type=cfg.loss_type, beta=cfg.beta,
        num_generations=cfg.num_generations, **reward_curve(trainer.state.log_history), **info,
        reward_failures=rewards.failure_counts(),
    )  # fmt: skip


def run(cfg: GRPOConfig, callbacks=None) -> dict:
    """The stage: train here (``launcher="none"``) or launch ``train`` on ``num_processes`` processes."""
    return training.run_stage(cfg, "tulu_kit.grpo", train, callbacks)


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: ``python -m tulu_kit.grpo CONFIG.yaml``."""
    return training.worker_main(GRPOConfig, train, argv, callbacks)


if __name__ == "__main__":
    sys.exit(main())
