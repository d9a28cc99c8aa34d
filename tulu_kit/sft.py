"""Supervised fine-tuning (full, LoRA, QLoRA) on TRL's SFTTrainer: the `sft` stage (notebooks 02 and 03).

The objective is the masked next-token loss: for a conversation tokenized into ``x_1..x_T`` with labels that are
-100 outside the assistant turns (``tulu_kit.data.tokenize``),

    L = sum_{t in A} -log p(x_t | x_<t)       A = the assistant tokens (their content and closing eos)

``reduce_loss`` says how L is normalised, as in open-instruct's ``finetune.py`` (PRE #1024):

* ``mean``: each micro-batch's loss is L divided by *its own* number of assistant tokens, and gradient
  accumulation averages the micro-batches. Short answers in a micro-batch weigh as much as long ones.
* ``sum``: each micro-batch's loss is the plain sum L (``CrossEntropyLoss(reduction="sum")``), so every token
  counts equally across gradient accumulation (the Tulu 3 setting, ``docs/tulu3.md``: ``--reduce_loss sum``).

Trainer choice: TRL's SFTTrainer runs the loop (DDP, DeepSpeed, checkpoints, resume, logging). Two Tulu choices
TRL cannot express are ours: the per-micro-batch ``mean`` / ``sum`` reduction above (TRL 1.16 always divides by
the token count of the whole accumulated batch, ``num_items_in_batch``), in ``TuluSFTTrainer``; and Tulu's
tokenization and packing (``tulu_kit.data``), given to TRL pre-tokenized with ``skip_prepare_dataset``. One
speed choice is the kit's: ``length_groups`` forwards a padded micro-batch as groups of rows of similar length
(the loss summed over the groups, then reduced as above, so the gradient is the one pass's). The
trainer subclass lives with the rest of TRL's private surface in :mod:`tulu_kit.trainers`.

The stage stands on :mod:`tulu_kit.training`: ``run(cfg)`` trains in this process or, by default for SFT, launches
:func:`train` with ``accelerate launch`` (or torchrun) on ``cfg.num_processes`` processes and ``cfg.num_machines``
nodes (``tulu-kit sft CONFIG`` on each node); this module is the launched entry point.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tulu_kit import models, trainers, training
from tulu_kit.io import read_rows
from tulu_kit.training import LoRAFields

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig(LoRAFields):
    """One SFT run: full fine-tuning, LoRA or QLoRA, on 1 CPU process up to N nodes with DeepSpeed.

    The shared fields (optimisation, checkpoints, LoRA, launching) are :class:`tulu_kit.training.TrainingFields`;
    these are SFT's own, and the defaults SFT changes.
    """

    model: str = "../runs/lab/quickstart/model"  # base model: local path or Hub id
    train_file: str = "../runs/lab/data/sft.jsonl"  # JSONL of {"messages": [...]} rows, or a Hub dataset id
    out_dir: str = "../runs/lab/sft"  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    chat_template: str = (
        "tulu"  # a name from data.templates.available_templates() ("trl/llama3", ...); "": keep own
    )
    max_length: int = 4096  # tokens per example; longer ones are cut from the right
    packing: bool = False  # padding-free packing of examples into rows of max_length tokens
    num_train_epochs: float = 2.0  # passes over the data (Tulu 2: 2 epochs; Tulu 3: 2)
    learning_rate: float = 2e-5  # peak AdamW rate (open-instruct default, Tulu 2; Tulu 3: 5e-6)
    warmup_ratio: float = 0.03  # fraction of the steps spent warming up linearly from 0
    per_device_train_batch_size: int = 8  # examples (or packed rows) per process per micro-batch
    reduce_loss: Literal["mean", "sum"] = "mean"  # mean per micro-batch, or sum: every token counts equally
    # forward each padded micro-batch as this many groups of rows of similar length, each cut to its longest row:
    # the same loss and gradient, less padding (the quickstart's SFT on CPU: 0.59 -> 0.39 s a step with 2). One
    # process without DeepSpeed (DDP and ZeRO expect one forward a backward; there it is one pass, and says so);
    # packed rows have no padding to cut. 1: one forward pass
    length_groups: int = 1
    save_total_limit: int = 3  # complete checkpoints kept
    eval_steps: int = 0  # evaluate on eval_file every N steps; 0: after each epoch (when eval_file is set)
    report_to: str = "tensorboard"  # "tensorboard", "wandb", "tensorboard,wandb" or "none"
    optim: str = "auto"  # auto: paged_adamw_32bit for QLoRA on a GPU, else adamw_torch (see README: fused)
    merge_adapter: bool = True  # after LoRA, merge the adapter into the (dequantized) base in <out_dir>/model
    launcher: Literal["accelerate", "torchrun", "none"] = "accelerate"  # "none" trains in this process

    def __post_init__(self):
        super().__post_init__()
        if self.length_groups < 1:
            raise ValueError(f"length_groups must be at least 1, got {self.length_groups}")


@dataclass
class LoRAConfig(SFTConfig):
    """The ``lora`` stage (notebook 03): the same fields, with adapters on and lab defaults that suit them."""

    out_dir: str = "../runs/lab/lora"  # merged model in <out_dir>/model, adapter in <out_dir>/adapter
    num_train_epochs: float = 1.0  # passes over the data (ignored when max_steps > 0)
    learning_rate: float = 1e-4  # adapters want a higher rate than full fine-tuning (Tulu 2 LoRA 7B)
    use_lora: bool = True  # train low-rank adapters instead of all weights
    lora_r: int = 16  # adapter rank (Tulu 2: 64)
    lora_alpha: int = 32  # scaling: the update is (alpha / r) * B A (Tulu 2: 16)
    lora_dropout: float = 0.05  # dropout on the adapter input (Tulu 2: 0.1)


# --------------------------------------------------------------------------- the loss


def masked_nll(logits: torch.Tensor, labels: torch.Tensor, reduce_loss: str = "mean") -> torch.Tensor:
    """The SFT loss from full logits (reference implementation; training uses TRL's chunked fused LM head).

    Shifts so position t predicts label t+1, ignores -100, and sums (``sum``) or averages over the trained tokens
    (``mean``), as open-instruct ``finetune.py`` does with ``CrossEntropyLoss(reduction=...)``.
    """
    shift_logits = logits[..., :-1, :].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[..., 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return nll if reduce_loss == "sum" else nll / (shift_labels != -100).sum().clamp(min=1)


# --------------------------------------------------------------------------- building blocks


def load_sft_data(path: str, tokenizer, cfg: SFTConfig):
    """Read a messages JSONL, tokenize with Tulu's label masking, optionally pack; return (Dataset, collator, stats)."""
    from datasets import Dataset

    from tulu_kit.data.packing import PackingCollator, PaddedCollator, pack_rows
    from tulu_kit.data.tokenize import tokenize_sft

    rows, stats = tokenize_sft(read_rows(path, cfg.train_split), tokenizer, cfg.max_length, source=path)
    if not rows:
        raise ValueError(f"{path}: no example has a trainable (assistant) token after tokenization")
    info = stats.summary()
    if cfg.packing:
        rows, pack_stats = pack_rows(rows, cfg.max_length, seed=cfg.seed)
        info.update(packed_rows=pack_stats.n_bins, packing_efficiency=round(pack_stats.efficiency, 4))
        flash = models.resolve_attention(cfg.attn_implementation) == "flash_attention_2"
        collator = PackingCollator(return_flash_attn_kwargs=flash)
    else:
        collator = PaddedCollator(pad_token_id=tokenizer.pad_token_id)
    return Dataset.from_list(rows), collator, info


def _optimizer_name(cfg: SFTConfig) -> str:
    if cfg.optim != "auto":
        return cfg.optim
    # bitsandbytes' paged optimizers page optimizer state through CUDA unified memory: GPU only
    return "paged_adamw_32bit" if cfg.load_in_4bit and torch.cuda.is_available() else "adamw_torch"


def trl_args(cfg: SFTConfig, has_eval: bool):
    """Our config -> TRL's SFTConfig (TrainingArguments)."""
    from trl import SFTConfig as TRLSFTConfig

    return training.training_arguments(
        cfg,
        TRLSFTConfig,
        has_eval,
        **({"eval_strategy": "epoch"} if has_eval and cfg.eval_steps <= 0 else {}),
        optim=_optimizer_name(cfg),
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        average_tokens_across_devices=False,
    )


# --------------------------------------------------------------------------- the stage


def build_trainer(cfg: SFTConfig, callbacks=None):
    """Tokenizer, data, model and trainer for ``cfg``; returns (trainer, data statistics)."""
    # ---- tokenizer and chat template; data: Tulu label masking (+ packing), pre-tokenized for TRL
    tokenizer = training.load_tokenizer(cfg)
    train_dataset, collator, info = load_sft_data(cfg.train_file, tokenizer, cfg)
    eval_dataset = load_sft_data(cfg.eval_file, tokenizer, cfg)[0] if cfg.eval_file else None
    # ---- model: full weights, or LoRA adapters on a (4-bit) frozen base; args first: ZeRO-3 shards while loading
    args = trl_args(cfg, has_eval=eval_dataset is not None)
    model = training.load_policy(cfg, add_adapters=True)
    trainer = trainers.sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=training.callbacks(cfg, callbacks),
        reduce_loss=cfg.reduce_loss,
        length_groups=cfg.length_groups,
    )
    return trainer, info


def train(cfg: SFTConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and the result."""
    trainer, info = build_trainer(cfg, callbacks)
    runtime = training.fit(trainer, cfg)
    model_dir = training.save_model(trainer, cfg, merge_adapter=cfg.merge_adapter)
    history = trainer.state.log_history
    first_nll, last_nll = training.loss_curve(history, "nll")
    train_loss = next((h["train_loss"] for h in history if "train_loss" in h), float("nan"))
    adapter_dir = str(Path(cfg.out_dir) / "adapter") if cfg.use_lora else None
    return training.finish(
        trainer, cfg, "sft", model_dir, runtime, first_nll=first_nll, last_nll=last_nll, train_loss=train_loss,
        adapter_dir=adapter_dir, data=info,
    )  # fmt: skip


def run(cfg: SFTConfig, callbacks=None) -> dict:
    """The stage: train here (``launcher="none"``) or launch :func:`train` on ``num_processes`` processes."""
    return training.run_stage(cfg, "tulu_kit.sft", train, callbacks)


def compare_runs(runs: dict[str, dict], load_in_4bit: bool, scale_to: int = 7_000_000_000):
    """Full vs LoRA/QLoRA side by side: trainable share, this run's peak memory, final NLL, and the memory the
    same trainable share would need at ``scale_to`` parameters (:func:`models.training_memory_gb`)."""
    import pandas as pd

    rows = {}
    for name, r in runs.items():
        share = r["trainable_params"] / r["total_params"]
        bits = 4 if load_in_4bit and share < 1 else 16
        scaled = models.training_memory_gb(scale_to, int(scale_to * share), weight_bits=bits)
        rows[name] = {
            "trainable": r["trainable_params"],
            "total": r["total_params"],
            "trainable %": round(100 * share, 2),
            "peak memory (MB, this run)": r["peak_memory_mb"],
            "final NLL": round(r["last_nll"], 3),
            f"{scale_to / 1e9:.0f}B estimate (GB)": round(scaled["total"], 1),
        }
    adapted = [r for r in runs.values() if r["trainable_params"] < r["total_params"]]
    if adapted and not load_in_4bit:  # what the same adapters would need on a 4-bit base
        share = adapted[-1]["trainable_params"] / adapted[-1]["total_params"]
        scaled = models.training_memory_gb(scale_to, int(scale_to * share), weight_bits=4)
        rows["QLoRA (estimate only)"] = {f"{scale_to / 1e9:.0f}B estimate (GB)": round(scaled["total"], 1)}
    return pd.DataFrame(rows).T.fillna("—")  # the estimate-only row was not run: a dash, never NaN


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: ``python -m tulu_kit.sft CONFIG.yaml``."""
    return training.worker_main(SFTConfig, train, argv, callbacks)


if __name__ == "__main__":
    sys.exit(main())
