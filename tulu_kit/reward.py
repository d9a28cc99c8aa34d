"""Reward-model stage: a Bradley–Terry scorer of chosen vs rejected replies (notebook `notebooks/05_reward_model.ipynb`).

The model is the SFT checkpoint with its LM head replaced by a scalar head (`AutoModelForSequenceClassification`,
one label). The reward of a conversation is the head's output at its **last non-pad token**, and training
minimises `-logσ(r_c - r_r)` over preference pairs (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), as in
open-instruct's `reward_modeling.py`. Training is TRL's `RewardTrainer` on pairs checked and tokenized like the
DPO stage's (`tulu_kit.data.pairs.split_pairs`, `tulu_kit.data.tokenize.tokenize_preference`); accuracy is measured on a
held-out split before and after training with `score_pairs`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import dataclass

import torch

from tulu_kit import models, training
from tulu_kit.losses import bradley_terry_loss
from tulu_kit.training import PreferenceFields

logger = logging.getLogger(__name__)


@dataclass
class RewardConfig(PreferenceFields):
    """One reward-model run: the shared training fields, the pairs' (as DPO), and the reward model's own.

    All weights train (no LoRA: the kit has no adapter merge for a scalar head yet)."""

    out_dir: str = "../runs/lab/reward"  # the reward model goes to <out_dir>/reward_model
    center_rewards_coefficient: float = 0.0  # adds c·(r_c + r_r)² to keep rewards centred on 0 (0: off)
    # --- defaults the reward model changes
    learning_rate: float = 3e-6  # peak learning rate (Tulu 3 8B RM: 3e-6)
    save_total_limit: int = 3  # complete checkpoints kept
    eval_steps: int = 0  # evaluate the held-out pairs every N steps; 0: before and after training only

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.center_rewards_coefficient) and self.center_rewards_coefficient >= 0):
            raise ValueError(
                f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}"
            )


# --------------------------------------------------------------------------- rewards


def get_reward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, read at the last non-pad token (right padding), as open-instruct's `get_reward`.

    The position comes from the attention mask, not from a pad token id, so it is right even when the
    tokenizer pads with its eos token.
    """
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    scores = model.score(hidden).squeeze(-1)  # (batch, seq)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).int().argmax(-1)
    return scores[torch.arange(scores.shape[0], device=scores.device), last]


def _full_weights(model):
    """A context in which a DeepSpeed ZeRO-3 model holds its full weights (its parameters are empty shards
    outside the engine's forward); a no-op for any other model. Every rank must enter it together."""
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


@torch.no_grad()
def score_pairs(model, rows: list[dict], pad_id: int, batch_size: int = 16) -> dict:
    """Rewards of tokenized pairs (`chosen_ids`/`rejected_ids`); accuracy = share with r_c > r_r.

    Under DeepSpeed ZeRO-3 every rank calls it (the weights are gathered for the forward passes).
    """
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    with _full_weights(model):
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for key, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                ids, mask = models.pad_batch([r[key] for r in batch], pad_id)
                out.append(get_reward(model, ids.to(device), mask.to(device)).float().cpu())
    r_c, r_r = torch.cat(chosen), torch.cat(rejected)
    return {
        "accuracy": (r_c > r_r).float().mean().item(),
        "margin": (r_c - r_r).mean().item(),
        "loss": bradley_terry_loss(r_c, r_r).mean().item(),
        "reward_chosen": r_c.mean().item(),
        "reward_rejected": r_r.mean().item(),
    }


# --------------------------------------------------------------------------- the stage


def _rows(pairs: list[dict], tokenizer, max_length: int, source: str) -> tuple[list[dict], dict]:
    """Pairs -> full chosen/rejected token sequences (the prompt rendered once, with one template)."""
    from tulu_kit.data.tokenize import tokenize_preference

    rows, stats = tokenize_preference(pairs, tokenizer, max_length, source=source)
    full = [{"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
            for r in rows]  # fmt: skip
    return full, stats.summary()


def _load_reward_model(cfg: RewardConfig):
    """The SFT backbone with a new scalar head. transformers' load report (which flags the new head as missing)
    is replaced by a check: the head must be the only weights not loaded, else a clear error."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            cfg.model,
            num_labels=1,
            dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
            attn_implementation=models.resolve_attention(cfg.attn_implementation),
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("score.")]
    if missing:
        raise ValueError(f"{cfg.model}: weights missing beyond the new reward head: {sorted(missing)[:5]}")
    logger.info("reward head 'score' initialised fresh; every other weight loaded from %s", cfg.model)
    return model


def trl_args(cfg: RewardConfig, has_eval: bool):
    """Our config -> TRL's RewardConfig (TrainingArguments)."""
    from trl import RewardConfig as TRLRewardConfig

    return training.training_arguments(
        cfg, TRLRewardConfig, has_eval, center_rewards_coefficient=cfg.center_rewards_coefficient or None
    )


def train(cfg: RewardConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and the result."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardTrainer

    from tulu_kit.data.pairs import split_pairs

    set_seed(cfg.seed)  # the new reward head is initialised randomly

    # ---- data: the same checked pairs and chat template as DPO, as full sequences
    train_pairs, eval_pairs, dropped = split_pairs(cfg)
    tokenizer = training.load_tokenizer(cfg)
    train_rows, stats = _rows(train_pairs, tokenizer, cfg.max_length, cfg.train_file)
    eval_rows, _ = _rows(eval_pairs, tokenizer, cfg.max_length, cfg.eval_file or "held-out")

    # ---- model: the SFT backbone with a new scalar head (its weights are the only ones not loaded)
    args = trl_args(cfg, has_eval=bool(eval_rows))
    model = _load_reward_model(cfg)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=training.callbacks(cfg, callbacks),
    )

    # ---- train, with held-out accuracy before and after
    before = score_pairs(trainer.model, eval_rows, tokenizer.pad_token_id) if eval_rows else {}
    runtime = training.fit(trainer, cfg)
    after = (
        score_pairs(trainer.accelerator.unwrap_model(trainer.model), eval_rows, tokenizer.pad_token_id)
        if eval_rows
        else {}
    )

    # ---- save: not <out_dir>/model, a name that marks a generative policy (evals pick a run's last model/)
    model_dir = training.save_model(trainer, cfg, name="reward_model")
    return training.finish(
        trainer, cfg, "reward", model_dir, runtime, n_train=len(train_rows), n_eval=len(eval_rows),
        dropped=dropped, tokenize=stats, eval_before=before, eval_after=after,
    )  # fmt: skip


def run(cfg: RewardConfig, callbacks=None) -> dict:
    """The stage: train here (`launcher="none"`) or launch `train` on `num_processes` processes."""
    return training.run_stage(cfg, "tulu_kit.reward", train, callbacks)


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: `python -m tulu_kit.reward CONFIG.yaml`."""
    return training.worker_main(RewardConfig, train, argv, callbacks)


if __name__ == "__main__":
    sys.exit(main())
