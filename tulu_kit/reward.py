"""Reward-model stage: a Bradley–Terry scorer of chosen vs rejected replies (notebook `notebooks/05_reward_model.ipynb`).

The model is the SFT checkpoint with its LM head replaced by a scalar head (`AutoModelForSequenceClassification`,
one label). The reward of a conversation is the head's output at its **last non-pad token**, and training
minimises `-logσ(r_c - r_r)` over preference pairs (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), as in
open-instruct's `reward_modeling.py`. Training is TRL's `RewardTrainer` on pairs checked and tokenized like the
DPO stage's (`tulu_kit.dpo.split_pairs`, `tulu_kit.data.tokenize.tokenize_preference`); accuracy is measured on a
held-out split before and after training with `score_pairs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from tulu_kit import launch
from tulu_kit.dpo import split_pairs
from tulu_kit.io import atomic_write_json, write_jsonl
from tulu_kit.losses import bradley_terry_loss

logger = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """One reward-model run; flat fields named as in `DPOConfig` where they mean the same."""

    # --- model and data
    model: str = "../runs/lab/sft/model"  # SFT model (path or Hub id); its LM head becomes a reward head
    train_file: str = "../runs/lab/data/preference.jsonl"  # JSONL of {"chosen", "rejected"} chats, or Hub id
    out_dir: str = "../runs/lab/reward"  # the reward model goes to <out_dir>/reward_model
    train_split: str = "train"  # split when train_file is a Hub dataset id
    eval_file: str = ""  # held-out pairs; "": hold out eval_fraction of train_file
    eval_fraction: float = 0.1  # share of train_file held out to measure accuracy
    max_train_samples: int = 0  # keep the first N training pairs; 0: all
    bad_pairs: Literal["error", "drop"] = "error"  # identical/empty/different-prompt pairs: raise or drop
    max_length: int = 2048  # prompt + response tokens; responses are cut from the right
    chat_template: str = ""  # name in tulu_kit.data.templates.CHAT_TEMPLATES; "" keeps the tokenizer's own
    # --- optimisation
    num_train_epochs: float = 1.0  # passes over the pairs (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1: run num_train_epochs
    learning_rate: float = 3e-6  # peak learning rate (Tulu 3 8B RM: 3e-6)
    lr_scheduler_type: Literal["linear", "cosine"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.0  # fraction of the steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW weight decay
    per_device_train_batch_size: int = 1  # pairs per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, slower
    bf16: bool = False  # bfloat16 mixed precision (GPU); False: fp32
    center_rewards_coefficient: float = 0.0  # adds c·(r_c + r_r)² to keep rewards centred on 0 (0: off)
    seed: int = 42  # data order, held-out split and the new head's init
    # --- checkpoints and logging
    save_steps: int = 0  # write a resumable checkpoint every N steps; 0: only the final model
    save_total_limit: int = 3  # checkpoints kept (the oldest are deleted)
    eval_steps: int = 0  # evaluate the held-out pairs every N steps; 0: before and after training only
    logging_steps: int = 1  # log loss, accuracy and margin every N steps
    report_to: str = "none"  # "none", "tensorboard", "wandb"
    resume: bool = False  # continue from the last complete checkpoint in <out_dir>/checkpoints
    # --- launching (see tulu_kit.launch)
    launcher: Literal["accelerate", "torchrun", "none"] = "none"  # "none" trains in this process
    num_processes: int = 1  # processes in total (all machines)
    deepspeed: str = ""  # DeepSpeed JSON, e.g. recipes/deepspeed/zero3.json ("": plain DDP)

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")


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


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return ids, mask


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
                ids, mask = _pad([r[key] for r in batch], pad_id)
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


def trl_args(cfg: RewardConfig, has_eval: bool):
    """Our config -> TRL's RewardConfig (TrainingArguments)."""
    from trl import RewardConfig as TRLRewardConfig

    return TRLRewardConfig(
        **launch.trainer_kwargs(cfg, has_eval),
        center_rewards_coefficient=cfg.center_rewards_coefficient or None,
        save_total_limit=cfg.save_total_limit,
    )


def train(cfg: RewardConfig) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and metrics."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardTrainer

    from tulu_kit import models
    from tulu_kit.config import to_dict
    from tulu_kit.data.templates import set_chat_template

    out = Path(cfg.out_dir)
    set_seed(cfg.seed)  # the new reward head is initialised randomly

    # ---- data: the same checked pairs and chat template as DPO, as full sequences
    train_pairs, eval_pairs, dropped = split_pairs(cfg)
    tokenizer = models.load_tokenizer(cfg.model)
    if cfg.chat_template:
        set_chat_template(tokenizer, cfg.chat_template)
    train_rows, stats = _rows(train_pairs, tokenizer, cfg.max_length, cfg.train_file)
    eval_rows, _ = _rows(eval_pairs, tokenizer, cfg.max_length, cfg.eval_file or "held-out")

    # ---- model: the SFT backbone with a scalar head (the "LOAD REPORT" about lm_head/score is expected)
    args = trl_args(cfg, has_eval=bool(eval_rows))
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model, num_labels=1, dtype=torch.bfloat16 if cfg.bf16 else torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        callbacks=[launch.complete_checkpoint_callback(to_dict(cfg))],
    )

    # ---- train, with held-out accuracy before and after
    before = score_pairs(model, eval_rows, tokenizer.pad_token_id) if eval_rows else {}
    checkpoint = launch.last_complete_checkpoint(out / "checkpoints") if cfg.resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    after = score_pairs(model, eval_rows, tokenizer.pad_token_id) if eval_rows else {}

    # ---- save: model with tokenizer, metrics, log history
    # not <out_dir>/model: that name marks a generative policy (evals pick a run's last model/ as the policy)
    with launch.atomic_dir(out / "reward_model", trainer.accelerator.is_main_process) as tmp:
        trainer.save_model(str(tmp))
    result = {"model_dir": str(out / "reward_model"), "n_train": len(train_rows), "n_eval": len(eval_rows),
              "dropped": dropped, "tokenize": stats, "train_steps": trainer.state.global_step,
              "eval_before": before, "eval_after": after}  # fmt: skip
    if trainer.accelerator.is_main_process:
        write_jsonl(out / "log_history.jsonl", [dict(h) for h in trainer.state.log_history])
        atomic_write_json(out / "config.json", asdict(cfg))
        atomic_write_json(out / "metrics.json", result)
    trainer.accelerator.wait_for_everyone()
    return result


def run(cfg: RewardConfig) -> dict:
    """The stage: train here (`launcher="none"`) or launch `train` on `num_processes` processes."""
    from tulu_kit.config import to_dict

    if cfg.launcher == "none":
        return train(cfg)
    launch.launch("tulu_kit.reward", to_dict(cfg), Path(cfg.out_dir), launcher=cfg.launcher,
                  num_processes=cfg.num_processes, deepspeed=launch.resolve_path(cfg.deepspeed),
                  mixed_precision="bf16" if cfg.bf16 else "no")  # fmt: skip
    return json.loads((Path(cfg.out_dir) / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """Entry point of a launched rank: `python -m tulu_kit.reward CONFIG.yaml`."""

    train(launch.worker_config(RewardConfig, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
