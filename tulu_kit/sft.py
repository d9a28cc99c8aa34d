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
the token count of the whole accumulated batch, ``num_items_in_batch``), in :class:`TuluSFTTrainer`; and Tulu's
tokenization and packing (``tulu_kit.data``), given to TRL pre-tokenized with ``skip_prepare_dataset``.

``run(cfg)`` launches :func:`train` through ``accelerate launch`` (or torchrun) in a subprocess when
``cfg.launcher`` says so, with ``cfg.num_processes`` processes and a DeepSpeed config; the same module is the
entry point: ``accelerate launch -m tulu_kit.sft <config.yaml>``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tulu_kit import launch, models
from tulu_kit.config import to_dict
from tulu_kit.io import atomic_write_json, read_rows, write_jsonl
from tulu_kit.models import TULU_LORA_TARGETS

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """One SFT run: full fine-tuning, LoRA or QLoRA, on 1 CPU process up to N nodes with DeepSpeed."""

    # --- model and data
    model: str = "../runs/lab/quickstart/model"  # base model: local path or Hub id
    train_file: str = "../runs/lab/data/sft.jsonl"  # JSONL of {"messages": [...]} rows, or a Hub dataset id
    train_split: str = "train"  # split when train_file is a Hub dataset id
    out_dir: str = "../runs/lab/sft"  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    eval_file: str = ""  # held-out JSONL of the same format ("": no evaluation)
    chat_template: str = "tulu"  # a name in data.templates.CHAT_TEMPLATES; "" keeps the tokenizer template
    max_length: int = 4096  # tokens per example; longer ones are cut from the right
    packing: bool = False  # padding-free packing of examples into rows of max_length tokens
    # --- optimisation
    num_train_epochs: float = 2.0  # passes over the data (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1: run num_train_epochs
    learning_rate: float = 2e-5  # peak AdamW rate (open-instruct default, Tulu 2; Tulu 3: 5e-6)
    lr_scheduler_type: Literal["linear", "cosine"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.03  # fraction of the steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 0.0  # gradient clipping; 0: off (the open-instruct default)
    per_device_train_batch_size: int = 8  # examples (or packed rows) per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    reduce_loss: Literal["mean", "sum"] = "mean"  # mean per micro-batch, or sum: every token counts equally
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~20% slower
    bf16: bool = False  # bfloat16 mixed precision (GPU); False: fp32
    attn_implementation: str = "auto"  # auto: flash_attention_2 when installed on a GPU, else sdpa
    seed: int = 42  # fixes data order, LoRA init and dropout
    # --- checkpoints and logging
    save_steps: int = 0  # write a resumable checkpoint every N steps; 0: only the final model
    save_total_limit: int = 3  # checkpoints kept (the oldest are deleted)
    eval_steps: int = 0  # evaluate on eval_file every N steps; 0: after each epoch (when eval_file is set)
    logging_steps: int = 1  # log loss and learning rate every N steps
    report_to: str = "tensorboard"  # "tensorboard", "wandb", "tensorboard,wandb" or "none"
    resume: bool = False  # continue from the last complete checkpoint in <out_dir>/checkpoints
    # --- LoRA / QLoRA (notebook 03)
    use_lora: bool = False  # train low-rank adapters instead of all weights
    lora_r: int = 64  # adapter rank
    lora_alpha: int = 16  # scaling: the update is (alpha / r) * B A
    lora_dropout: float = 0.1  # dropout on the adapter input
    lora_target_modules: str = TULU_LORA_TARGETS  # or "all-linear"
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base (bitsandbytes); needs use_lora
    optim: str = "auto"  # auto: paged_adamw_32bit for QLoRA on a GPU, else adamw_torch
    merge_adapter: bool = True  # after LoRA, merge the adapter into the (dequantized) base in <out_dir>/model
    # --- launching (see tulu_kit.launch)
    launcher: Literal["accelerate", "torchrun", "none"] = "accelerate"  # "none" trains in this process
    num_processes: int = 1  # processes in total (all machines)
    deepspeed: str = ""  # DeepSpeed JSON, e.g. recipes/deepspeed/zero3.json ("": plain DDP)
    num_machines: int = 1  # nodes; run the same command on each with its machine_rank
    machine_rank: int = 0  # rank of this node (0: the main node)
    main_process_ip: str = ""  # address of the main node (multi-node only)
    main_process_port: int = 29500  # port of the main node

    def __post_init__(self):
        if self.load_in_4bit and not self.use_lora:
            raise ValueError("load_in_4bit (QLoRA) trains adapters: set use_lora: true")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_processes",
            "num_machines",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")


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


@dataclass
class SFTResult:
    """What a run produced; also written to ``<out_dir>/result.json``."""

    model_dir: str
    adapter_dir: str | None
    global_step: int
    train_loss: float  # the Trainer's average of the reduced loss (a sum for reduce_loss=sum)
    first_nll: float  # per-token NLL of the first logged step
    last_nll: float  # per-token NLL of the last logged step
    trainable_params: int
    total_params: int
    world_size: int
    peak_memory_mb: float  # peak CUDA memory, or peak process RSS on CPU (rank 0)
    train_runtime_s: float
    steps_per_second: float
    data: dict = field(default_factory=dict)  # tokenization / packing statistics
    log_history: list = field(default_factory=list)  # the Trainer's logs: loss, nll, learning_rate, ...


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


def _trainer_class():
    """``TuluSFTTrainer`` (built lazily: importing trl takes seconds)."""
    from trl import SFTTrainer

    class TuluSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is reduced per micro-batch as open-instruct does (``reduce_loss``)."""

        # our loss is per micro-batch: the Trainer divides it by the number of accumulation steps
        loss_is_scaled_for_ga = False

        def __init__(self, *args, reduce_loss: str = "mean", **kwargs):
            self.reduce_loss = reduce_loss
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs = {**inputs, "use_cache": False}
            # TRL's fused head returns log p(label) per position (0 where the label is -100) without the logits
            outputs = model(**inputs, fused_lm_head=True)
            nll_sum = -outputs.log_probs.sum()
            n_tokens = outputs.label_mask.sum()
            loss = nll_sum if self.reduce_loss == "sum" else nll_sum / n_tokens.clamp(min=1)
            gathered = self.accelerator.gather_for_metrics(
                torch.stack([nll_sum.detach().float(), n_tokens.float(), outputs.is_top1.sum().float()])[None]
            ).sum(0)
            denom = gathered[1].clamp(min=1)
            self._metrics[mode]["nll"].append((gathered[0] / denom).item())
            self._metrics[mode]["mean_token_accuracy"].append((gathered[2] / denom).item())
            self._metrics[mode]["trained_tokens"].append(gathered[1].item())
            return (loss, outputs) if return_outputs else loss

    return TuluSFTTrainer


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

    kwargs = launch.trainer_kwargs(cfg, has_eval)
    if has_eval and cfg.eval_steps <= 0:
        kwargs["eval_strategy"] = "epoch"
    return TRLSFTConfig(
        **kwargs,
        max_grad_norm=cfg.max_grad_norm,
        save_total_limit=cfg.save_total_limit,
        optim=_optimizer_name(cfg),
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,
    )


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _summarise(trainer, cfg, model_dir, adapter_dir, counts, info, runtime) -> SFTResult:
    history = [dict(h) for h in trainer.state.log_history]
    nlls = [h["nll"] for h in history if "nll" in h]
    steps = trainer.state.global_step
    return SFTResult(
        model_dir=str(model_dir),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        global_step=steps,
        train_loss=float(next((h["train_loss"] for h in history if "train_loss" in h), float("nan"))),
        first_nll=nlls[0] if nlls else float("nan"),
        last_nll=nlls[-1] if nlls else float("nan"),
        trainable_params=counts[0],
        total_params=counts[1],
        world_size=trainer.accelerator.num_processes,
        peak_memory_mb=round(_peak_memory_mb(), 1),
        train_runtime_s=round(runtime, 3),
        steps_per_second=round(steps / runtime, 4) if runtime > 0 else 0.0,
        data=info,
        log_history=history,
    )


# --------------------------------------------------------------------------- the stage


def build_trainer(cfg: SFTConfig, callbacks=None):
    """Tokenizer, data, model and trainer for ``cfg``; returns (trainer, data statistics)."""
    from tulu_kit.data.templates import set_chat_template

    # ---- tokenizer and chat template
    tokenizer = models.load_tokenizer(cfg.model)
    if cfg.chat_template:
        set_chat_template(tokenizer, cfg.chat_template)
    # ---- data: Tulu label masking (+ packing), pre-tokenized for TRL
    train_dataset, collator, info = load_sft_data(cfg.train_file, tokenizer, cfg)
    eval_dataset = load_sft_data(cfg.eval_file, tokenizer, cfg)[0] if cfg.eval_file else None
    # ---- model: full weights, or LoRA adapters on a (4-bit) frozen base
    args = trl_args(
        cfg, has_eval=eval_dataset is not None
    )  # before the model: ZeRO-3 shards it while loading
    model = models.load_model_for_training(
        cfg.model,
        dtype="bfloat16" if cfg.bf16 else "float32",
        attn_implementation=cfg.attn_implementation,
        load_in_4bit=cfg.load_in_4bit,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    if cfg.use_lora:
        model = models.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    # ---- trainer
    config_dict = to_dict(cfg)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[launch.complete_checkpoint_callback(config_dict), *(callbacks or [])],
        reduce_loss=cfg.reduce_loss,
    )
    return trainer, info


def save_final(trainer, cfg: SFTConfig) -> tuple[Path, Path | None]:
    """Write the final model (or adapter, then the merged model) with tokenizer, chat template and config.

    Returns (model_dir, adapter_dir). Every rank calls it: under ZeRO-3 saving gathers the weights from all ranks.
    """
    out_dir, main, config = Path(cfg.out_dir), trainer.accelerator.is_main_process, to_dict(cfg)
    target = out_dir / ("adapter" if cfg.use_lora else "model")
    with launch.atomic_dir(target, main) as tmp:
        trainer.save_model(str(tmp))  # weights + tokenizer (chat_template.jinja) in save_pretrained layout
        if main:
            atomic_write_json(tmp / launch.CONFIG_NAME, config)
    if not cfg.use_lora:
        return target, None
    if cfg.merge_adapter and main:
        from tulu_kit.merge import merge_lora  # QLoRA: into the dequantized NF4 base, as it was trained

        dtype = "bfloat16" if cfg.bf16 else "float32"
        merged = merge_lora(cfg.model, target, out_dir / "model", qlora=cfg.load_in_4bit, dtype=dtype)
        atomic_write_json(merged / launch.CONFIG_NAME, config)
    trainer.accelerator.wait_for_everyone()
    return (out_dir / "model" if cfg.merge_adapter else target), target


def train(cfg: SFTConfig, callbacks=None) -> SFTResult:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and result.json."""
    out_dir = Path(cfg.out_dir)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out_dir / "tensorboard")  # read by transformers' TB callback
    trainer, info = build_trainer(cfg, callbacks)
    counts = models.count_parameters(trainer.model)
    logger.info("trainable parameters: %d of %d", *counts)

    # ---- train, resuming from the last complete checkpoint
    checkpoint = launch.last_complete_checkpoint(out_dir / "checkpoints") if cfg.resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.perf_counter() - start

    # ---- save: the final model (adapters merged) in save_pretrained layout, atomically
    model_dir, adapter_dir = save_final(trainer, cfg)
    result = _summarise(trainer, cfg, model_dir, adapter_dir, counts, info, runtime)
    if trainer.accelerator.is_main_process:
        atomic_write_json(out_dir / "config.json", to_dict(cfg))
        atomic_write_json(out_dir / "result.json", asdict(result))
        write_jsonl(out_dir / "log_history.jsonl", result.log_history)  # what every training stage leaves
    trainer.accelerator.wait_for_everyone()
    return result


def run(cfg: SFTConfig, callbacks=None) -> SFTResult:
    """The stage: train here (``launcher="none"``) or launch :func:`train` on ``num_processes`` processes."""
    if cfg.launcher == "none":
        return train(cfg, callbacks)
    if callbacks:
        raise ValueError("callbacks only work in-process: set launcher='none'")
    launch.launch(
        "tulu_kit.sft",
        to_dict(cfg),
        Path(cfg.out_dir),
        launcher=cfg.launcher,
        num_processes=cfg.num_processes,
        deepspeed=launch.resolve_path(cfg.deepspeed),
        num_machines=cfg.num_machines,
        machine_rank=cfg.machine_rank,
        main_process_ip=cfg.main_process_ip,
        main_process_port=cfg.main_process_port,
        mixed_precision="bf16" if cfg.bf16 else "no",
    )
    return load_result(cfg.out_dir)


def compare_runs(runs: dict[str, SFTResult], load_in_4bit: bool, scale_to: int = 7_000_000_000):
    """Full vs LoRA/QLoRA side by side: trainable share, this run's peak memory, final NLL, and the memory the
    same trainable share would need at ``scale_to`` parameters (:func:`models.training_memory_gb`)."""
    import pandas as pd

    rows = {}
    for name, r in runs.items():
        share = r.trainable_params / r.total_params
        bits = 4 if load_in_4bit and share < 1 else 16
        scaled = models.training_memory_gb(scale_to, int(scale_to * share), weight_bits=bits)
        rows[name] = {
            "trainable": r.trainable_params,
            "total": r.total_params,
            "trainable %": round(100 * share, 2),
            "peak memory (MB, this run)": r.peak_memory_mb,
            "final NLL": round(r.last_nll, 3),
            f"{scale_to / 1e9:.0f}B estimate (GB)": round(scaled["total"], 1),
        }
    adapted = [r for r in runs.values() if r.trainable_params < r.total_params]
    if adapted and not load_in_4bit:  # what the same adapters would need on a 4-bit base
        share = adapted[-1].trainable_params / adapted[-1].total_params
        scaled = models.training_memory_gb(scale_to, int(scale_to * share), weight_bits=4)
        rows["QLoRA (estimate only)"] = {f"{scale_to / 1e9:.0f}B estimate (GB)": round(scaled["total"], 1)}
    return pd.DataFrame(rows).T


def sample_replies(model_dir: str | Path, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy replies of a saved model to single-turn prompts, through its own chat template."""
    tokenizer, model = models.load_tokenizer(model_dir), models.load_model(model_dir)
    replies = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)  # fmt: skip
        inputs = tokenizer(
            text,
            return_tensors="pt",
            add_special_tokens=not (tokenizer.bos_token and text.startswith(tokenizer.bos_token)),
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        replies.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


def load_result(out_dir: str | Path) -> SFTResult:
    """The result a (launched) run wrote to ``<out_dir>/result.json``."""
    path = Path(out_dir) / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the training run wrote no result")
    return SFTResult(**json.loads(path.read_text()))


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: ``python -m tulu_kit.sft CONFIG.yaml``."""
    cfg = launch.worker_config(SFTConfig, sys.argv[1:] if argv is None else argv)
    train(cfg, callbacks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
