"""DPO stage: preference tuning of an SFT model with DPO and its variants (notebook `notebooks/04_dpo.ipynb`).

`run(cfg)` reads top to bottom: load and check the preference pairs, tokenize them with the model's chat template,
load the policy (full, LoRA or QLoRA), cache the reference log-probs in one pass, train with TRL's
`DPOTrainer`, evaluate preference accuracy on held-out pairs, save the model and the metrics.

Losses (`tulu_kit.losses`): `dpo`, `dpo_norm` and `ipo` run TRL's own loss (`sigmoid`, `sigmoid_norm`, `ipo`);
`simpo`, `wpo` and any `label_smoothing > 0` run this kit's loss inside the same trainer, because TRL 1.16 has no
SimPO in `DPOTrainer`, weights WPO differently from open-instruct, and ignores label smoothing in `sigmoid`.

Reference (`reference="cached"`, open-instruct's `dpo_tune_cache.py`): before training, one pass over the data
computes the reference model's summed log-probs of every chosen and rejected response and stores them per example
in `<ref_cache_dir>/<key>.pt`, keyed by the tokenized data and the model weights, so no reference model stays in
memory and a second run with the same data and model skips the pass. With LoRA the reference is the base model
with the adapter disabled. `reference="model"` keeps a frozen reference model instead (`bench/bench_dpo_memory.py`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from tulu_kit import launch, losses
from tulu_kit.data.validate import BadRowError, validate_preference
from tulu_kit.io import atomic_path, atomic_write_json, read_rows, write_jsonl
from tulu_kit.models import TULU_LORA_TARGETS

logger = logging.getLogger(__name__)

TRL_LOSS = {"dpo": "sigmoid", "dpo_norm": "sigmoid_norm", "ipo": "ipo"}  # kit name -> TRL DPOConfig.loss_type
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")  # fmt: skip


@dataclass
class DPOConfig:
    """One DPO run; flat fields (named as in `SFTConfig` where they mean the same) for the parameters cell."""

    # --- model and data
    model: str = "../runs/lab/sft/model"  # SFT model (local path or Hub id): the policy and the reference
    train_file: str = "../runs/lab/data/preference.jsonl"  # JSONL of {"chosen", "rejected"} chats, or Hub id
    out_dir: str = "../runs/lab/dpo"  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    train_split: str = "train"  # split when train_file is a Hub dataset id
    eval_file: str = ""  # held-out pairs; "": hold out eval_fraction of train_file
    eval_fraction: float = 0.1  # share of train_file held out to measure preference accuracy
    max_train_samples: int = 0  # keep the first N training pairs; 0: all
    bad_pairs: Literal["error", "drop"] = "error"  # identical/empty/different-prompt pairs: raise or drop
    max_length: int = 2048  # prompt + response tokens; responses are cut from the right
    chat_template: str = ""  # name in tulu_kit.data.templates.CHAT_TEMPLATES; "" keeps the tokenizer's own
    # --- the preference loss (tulu_kit.losses)
    loss_type: Literal["dpo", "dpo_norm", "simpo", "wpo", "ipo"] = "dpo_norm"  # Tulu 3: dpo_norm; Tulu 2: dpo
    beta: float = 5.0  # KL strength β (τ for IPO); Tulu 3: 5 with dpo_norm, Tulu 2: 0.1 with dpo
    gamma_beta_ratio: float = 0.3  # SimPO target margin γ/β
    label_smoothing: float = 0.0  # conservative DPO ε: assumed share of flipped preference labels
    reference: Literal["cached", "model"] = "cached"  # cached log-probs, or a reference model in memory
    ref_cache_dir: str = ""  # where cached reference log-probs live; "": <out_dir>/ref_cache
    # --- optimisation
    num_train_epochs: float = 1.0  # passes over the pairs (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1: run num_train_epochs
    learning_rate: float = 5e-7  # peak learning rate (Tulu 2 and Tulu 3 8B DPO: 5e-7)
    lr_scheduler_type: Literal["linear", "cosine"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.1  # fraction of the steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 0.0  # gradient clipping; 0: off
    per_device_train_batch_size: int = 1  # pairs per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, slower
    bf16: bool = False  # bfloat16 mixed precision (GPU); False: fp32
    attn_implementation: str = "auto"  # auto: flash_attention_2 when installed on a GPU, else sdpa
    seed: int = 42  # data order, held-out split and LoRA init
    # --- checkpoints and logging
    save_steps: int = 0  # write a resumable checkpoint every N steps; 0: only the final model
    save_total_limit: int = 2  # checkpoints kept
    eval_steps: int = 0  # evaluate the held-out pairs every N steps; 0: before and after training only
    logging_steps: int = 1  # log loss, rewards, margins, accuracy and log-probs every N steps
    report_to: str = "none"  # "none", "tensorboard", "wandb"
    resume: bool = False  # continue from the last complete checkpoint in <out_dir>/checkpoints
    # --- LoRA / QLoRA
    use_lora: bool = False  # train adapters; the reference is then the base with the adapter disabled
    lora_r: int = 64  # adapter rank
    lora_alpha: int = 16  # scaling: the update is (alpha / r) * B A
    lora_dropout: float = 0.0  # dropout on the adapter input
    lora_target_modules: str = TULU_LORA_TARGETS  # modules, or "all-linear"
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base (bitsandbytes); needs use_lora
    # --- launching (see tulu_kit.launch)
    launcher: Literal["accelerate", "torchrun", "none"] = "none"  # "none" trains in this process
    num_processes: int = 1  # processes in total (all machines)
    deepspeed: str = ""  # DeepSpeed JSON, e.g. recipes/deepspeed/zero3.json ("": plain DDP)
    num_machines: int = 1  # nodes; run the same command on each with its machine_rank
    machine_rank: int = 0  # this node's rank (0: the main node)
    main_process_ip: str = ""  # address of the main node (multi-node only)
    main_process_port: int = 29500  # port of the main node

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("label_smoothing has no meaning for loss_type 'ipo'")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.load_in_4bit and not self.use_lora:
            raise ValueError("load_in_4bit (QLoRA) trains adapters: set use_lora: true")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")

    @property
    def own_loss(self) -> bool:
        """Whether the loss comes from tulu_kit.losses rather than TRL's DPOTrainer."""
        return self.loss_type not in TRL_LOSS or self.label_smoothing > 0


# --------------------------------------------------------------------------- data


def _problem_kind(err: BadRowError) -> str:
    if "identical" in err.problem:
        return "identical"
    if "same prompt" in err.problem:
        return "different_prompts"
    if "empty" in err.problem:
        return "empty_response"
    return "malformed"


def load_pairs(
    path: str, split: str = "train", bad_pairs: str = "error"
) -> tuple[list[dict], dict[str, int]]:
    """Read preference pairs and check each one; a bad pair raises (naming file, row, field) or is dropped.

    Bad pairs: a malformed conversation, different prompts in chosen and rejected, an empty response, or a
    chosen response identical to the rejected one (no preference signal: DPO's gradient is zero on it).
    """
    pairs, dropped = [], Counter()
    for i, row in enumerate(read_rows(path, split), 1):
        try:
            pair = validate_preference(row, source=path, index=i)
            if pair["chosen"][-1]["content"].strip() == pair["rejected"][-1]["content"].strip():
                raise BadRowError(path, i, "rejected", "chosen and rejected responses are identical")
        except BadRowError as err:
            if bad_pairs == "error":
                raise
            dropped[_problem_kind(err)] += 1
            continue
        pairs.append(pair)
    if dropped:
        logger.warning("%s: dropped %d bad pairs: %s", path, sum(dropped.values()), dict(dropped))
    if not pairs:
        raise ValueError(f"{path}: no usable preference pairs")
    return pairs, dict(dropped)


def split_pairs(cfg: DPOConfig) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out pairs, with the counts of dropped pairs per file."""
    train, dropped = load_pairs(cfg.train_file, cfg.train_split, cfg.bad_pairs)
    counts = {"train_file": dropped}
    if cfg.eval_file:
        heldout, counts["eval_file"] = load_pairs(cfg.eval_file, "test", cfg.bad_pairs)
    else:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = int(round(len(train) * cfg.eval_fraction))
        heldout = [train[i] for i in order[:n_eval]]
        train = [train[i] for i in sorted(order[n_eval:])]
    if cfg.max_train_samples:
        train = train[: cfg.max_train_samples]
    return train, heldout, counts


# --------------------------------------------------------------------------- reference cache


def reference_cache_key(rows: list[dict], model_hash: str, max_length: int | None, dtype: str) -> str:
    """Key of a reference cache file: the tokenized data (in order), the model weights and the truncation."""
    h = hashlib.sha256(json.dumps({"model": model_hash, "max_length": max_length, "dtype": dtype}).encode())
    for row in rows:
        h.update(json.dumps([row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]]).encode())
    return h.hexdigest()[:24]


def model_fingerprint(model: str) -> str:
    """The model's name and, for a local folder, the name, size and mtime of each weight file.

    Part of the reference cache key besides TRL's hash of the weights, which under DeepSpeed ZeRO-3 hashes empty
    parameter shards: the same for every model of one architecture, so a retrained or different SFT model would
    silently reuse the old model's reference log-probs.
    """
    files = sorted(p for p in Path(model).glob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps([str(model), stats]).encode()).hexdigest()


def _example_digests(rows: list[dict]) -> list[str]:
    return [
        hashlib.sha1(json.dumps([r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]]).encode()).hexdigest()[
            :16
        ]
        for r in rows
    ]


@functools.cache
def _trainer_class():
    """TRL's DPOTrainer with the kit's reference cache and the losses TRL lacks (built lazily: TRL is slow)."""
    from accelerate.utils import broadcast_object_list
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from trl import DPOTrainer
    from trl.models import prepare_deepspeed

    class KitDPOTrainer(DPOTrainer):
        kit: DPOConfig
        cache_dir: Path

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized by tulu_kit.data.tokenize with the model's chat template

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if "ref_chosen_logps" in dataset.column_names:
                return dataset
            if self.kit.loss_type == "simpo":  # reference-free: the columns only keep the collator uniform
                zeros = [0.0] * len(dataset)
                return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)
            rows = dataset.to_list()
            model_id = f"{self._precompute_model_hash}|{model_fingerprint(self.kit.model)}"
            # rank 0's key for every rank: file times (one copy of the model per node) can differ between nodes
            key = [reference_cache_key(rows, model_id, self.kit.max_length, str(self.kit.bf16))]
            broadcast_object_list(key, from_process=0)
            key = key[0]
            path = self.cache_dir / f"ref_logps_{key}.pt"
            if path.is_file():
                logger.info("%s: reference log-probs loaded from %s", name, path)
            else:
                chosen, rejected = self._reference_pass(dataset, name, batch_size)
                if self.accelerator.is_main_process:
                    with atomic_path(path) as tmp:
                        torch.save(
                            {"examples": _example_digests(rows), "chosen": chosen, "rejected": rejected}, tmp
                        )
                self.accelerator.wait_for_everyone()
            cache = torch.load(path)
            if cache["examples"] != _example_digests(rows):
                raise RuntimeError(f"{path}: cached examples do not match the {name} data; delete the file")
            return dataset.add_column("ref_chosen_logps", cache["chosen"].tolist()).add_column(
                "ref_rejected_logps", cache["rejected"].tolist()
            )

        def _reference_pass(self, dataset, name, batch_size):
            loader = self.accelerator.prepare(
                DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
            )
            model = self.ref_model or self.model
            if self.ref_model is None and self.is_deepspeed_enabled:  # ZeRO shards are gathered by an engine
                # one engine for every pass (train, eval, evaluate), as TRL: a second one on the same module breaks
                # ZeRO-3's parameter trace ('pop from an empty deque')
                if self._precompute_engine is None:
                    self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            chosen, rejected = [], []
            for batch in tqdm(loader, desc=f"reference log-probs ({name})"):
                c, r = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
            return torch.cat(chosen), torch.cat(rejected)

        def _compute_loss(self, model, inputs, return_outputs):
            if not self.kit.own_loss:
                return super()._compute_loss(model, inputs, return_outputs)
            mode = "train" if self.model.training else "eval"
            mask = inputs["completion_mask"]
            kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps",
                                                                    "ref_rejected_logps")}  # fmt: skip
            labels = inputs["input_ids"].masked_fill(mask == 0, -100)
            outputs = model(**kwargs, use_cache=False, labels=labels, fused_lm_head=True)
            shift_mask = mask[..., 1:]
            logps = outputs.log_probs[:, -shift_mask.size(1) :].sum(dim=1)
            policy_c, policy_r = logps.chunk(2)
            len_c, len_r = shift_mask.sum(dim=1).chunk(2)
            if self.precompute_ref_logps:
                ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_c, ref_r = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
            per_pair, rew_c, rew_r = losses.preference_loss(
                self.kit.loss_type, policy_c, policy_r, ref_c, ref_r, len_c, len_r, self.kit.beta,
                self.kit.label_smoothing, self.kit.gamma_beta_ratio,
            )  # fmt: skip
            gather = self.accelerator.gather_for_metrics
            m = self._metrics[mode]
            m["rewards/chosen"].append(gather(rew_c).mean().item())
            m["rewards/rejected"].append(gather(rew_r).mean().item())
            m["rewards/margins"].append(gather(rew_c - rew_r).mean().item())
            m["rewards/accuracies"].append(gather((rew_c > rew_r).float()).mean().item())
            m["logps/chosen"].append(gather(policy_c.detach()).mean().item())
            m["logps/rejected"].append(gather(policy_r.detach()).mean().item())
            loss = per_pair.mean()
            return (loss, outputs) if return_outputs else loss

    return KitDPOTrainer


# --------------------------------------------------------------------------- model and trainer


def trl_args(cfg: DPOConfig, has_eval: bool):
    """Our config -> TRL's DPOConfig (TrainingArguments)."""
    from trl import DPOConfig as TRLDPOConfig

    return TRLDPOConfig(
        **launch.trainer_kwargs(cfg, has_eval),
        loss_type=[TRL_LOSS.get(cfg.loss_type, "sigmoid")],  # unused when cfg.own_loss
        beta=cfg.beta,
        precompute_ref_log_probs=cfg.reference == "cached",
        max_grad_norm=cfg.max_grad_norm,
        save_total_limit=cfg.save_total_limit,
        # the held-out metrics before training: inside train(), since an evaluate() before it leaves DeepSpeed
        # with an inference engine that train() then cannot step (ZeRO-3: 'NoneType' has no 'backward')
        eval_on_start=has_eval,
        ddp_find_unused_parameters=False,
    )


def build_trainer(cfg: DPOConfig, callbacks=None):
    """Tokenizer, checked and tokenized pairs, policy and trainer for `cfg`; returns (trainer, data info)."""
    from datasets import Dataset

    from tulu_kit import models
    from tulu_kit.config import to_dict
    from tulu_kit.data.templates import set_chat_template
    from tulu_kit.data.tokenize import tokenize_preference

    # ---- data: check pairs, hold some out, tokenize prompt/chosen/rejected with the model's chat template
    train_pairs, eval_pairs, dropped = split_pairs(cfg)
    tokenizer = models.load_tokenizer(cfg.model)
    if cfg.chat_template:
        set_chat_template(tokenizer, cfg.chat_template)
    train_rows, stats = tokenize_preference(train_pairs, tokenizer, cfg.max_length, source=cfg.train_file)
    eval_rows, _ = tokenize_preference(
        eval_pairs, tokenizer, cfg.max_length, source=cfg.eval_file or "held-out"
    )
    if not train_rows:
        raise ValueError(f"{cfg.train_file}: no pair left after tokenization (max_length {cfg.max_length})")
    info = {
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
        "dropped": dropped,
        "tokenize": stats.summary(),
    }
    # ---- model: full weights, or LoRA on a (4-bit) frozen base; args first: ZeRO-3 shards while loading
    args = trl_args(cfg, has_eval=bool(eval_rows))
    model = models.load_model_for_training(
        cfg.model, dtype="bfloat16" if cfg.bf16 else "float32", attn_implementation=cfg.attn_implementation,
        load_in_4bit=cfg.load_in_4bit, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    # ---- trainer: the reference log-probs are cached while it is built (KitDPOTrainer._precompute_ref_logps)
    cache_dir = Path(cfg.ref_cache_dir or Path(cfg.out_dir) / "ref_cache")
    trainer_cls = type("KitDPOTrainer", (_trainer_class(),), {"kit": cfg, "cache_dir": cache_dir})
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=(  # given to DPOTrainer, not applied here: the reference is the base, adapter disabled
            models.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
            if cfg.use_lora
            else None
        ),
        callbacks=[launch.complete_checkpoint_callback(to_dict(cfg)), *(callbacks or [])],
    )
    return trainer, info


def _save_model(trainer, cfg: DPOConfig) -> Path:
    """The final model in `save_pretrained` layout at `<out_dir>/model`, a LoRA adapter merged into its base."""
    from tulu_kit.merge import merge_lora

    out, is_main = Path(cfg.out_dir), trainer.accelerator.is_main_process
    if not cfg.use_lora:
        with launch.atomic_dir(out / "model", is_main) as tmp:
            trainer.save_model(str(tmp))
        return out / "model"
    with launch.atomic_dir(out / "adapter", is_main) as tmp:
        trainer.save_model(str(tmp))
    if is_main:
        merge_lora(cfg.model, out / "adapter", out / "model", qlora=cfg.load_in_4bit,
                          dtype="bfloat16" if cfg.bf16 else "float32")  # fmt: skip
    return out / "model"


def history_table(log_history: list[dict]):
    """The trainer's log history as a DataFrame with one row per logged step (train and eval columns)."""
    import pandas as pd

    df = pd.DataFrame(log_history)
    return df.groupby("step", as_index=False).first() if "step" in df else df


def plot_metrics(log_history: list[dict], path: str | Path | None = None):
    """Loss, chosen/rejected rewards, margins, accuracy and log-probs over steps (train lines, eval dots)."""
    import matplotlib.pyplot as plt

    df = history_table(log_history)
    panels = [("loss",), ("rewards/chosen", "rewards/rejected"), ("rewards/margins",), ("rewards/accuracies",),
              ("logps/chosen", "logps/rejected")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, keys in zip(axes, panels):
        for key in keys:
            if key in df:
                ax.plot(df["step"], df[key], label=f"train {key}")
            if f"eval_{key}" in df:
                ax.plot(df["step"], df[f"eval_{key}"], "o--", label=f"held-out {key}")
        ax.set_title(" / ".join(keys))
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    return fig


# --------------------------------------------------------------------------- run


def train(cfg: DPOConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and metrics."""

    out = Path(cfg.out_dir)
    trainer, info = build_trainer(cfg, callbacks)
    has_eval = trainer.eval_dataset is not None

    # ---- train, with held-out preference accuracy and margins before (eval_on_start: the first eval log, also
    # after a resume, whose history comes from the checkpoint) and after
    checkpoint = launch.last_complete_checkpoint(out / "checkpoints") if cfg.resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    before = next((h for h in trainer.state.log_history if "eval_loss" in h), {}) if has_eval else {}
    after = trainer.evaluate() if has_eval else {}

    # ---- save: model, log history, metrics and their plot
    model_dir = _save_model(trainer, cfg)
    result = {"model_dir": str(model_dir), "loss_type": cfg.loss_type, "reference": cfg.reference, **info,
              "train_steps": trainer.state.global_step, "eval_before": _pref_metrics(before),
              "eval_after": _pref_metrics(after)}  # fmt: skip
    if trainer.accelerator.is_main_process:
        history = [dict(h) for h in trainer.state.log_history]
        write_jsonl(out / "log_history.jsonl", history)
        plot_metrics(history, out / "metrics.png")
        atomic_write_json(out / "config.json", asdict(cfg))
        atomic_write_json(out / "metrics.json", result)
    trainer.accelerator.wait_for_everyone()
    return result


def run(cfg: DPOConfig, callbacks=None) -> dict:
    """The stage: train here (`launcher="none"`) or launch `train` on `num_processes` processes."""
    from tulu_kit.config import to_dict

    if cfg.launcher == "none":
        return train(cfg, callbacks)
    if callbacks:
        raise ValueError("callbacks only work in-process: set launcher='none'")
    launch.launch(
        "tulu_kit.dpo", to_dict(cfg), Path(cfg.out_dir), launcher=cfg.launcher, num_processes=cfg.num_processes,
        deepspeed=launch.resolve_path(cfg.deepspeed), num_machines=cfg.num_machines, machine_rank=cfg.machine_rank,
        main_process_ip=cfg.main_process_ip, main_process_port=cfg.main_process_port,
        mixed_precision="bf16" if cfg.bf16 else "no",
    )  # fmt: skip
    return json.loads((Path(cfg.out_dir) / "metrics.json").read_text())


def _pref_metrics(logs: dict) -> dict:
    return {k: logs[f"eval_{k}"] for k in METRICS if f"eval_{k}" in logs}


def main(argv: list[str] | None = None) -> int:
    """Entry point of a launched rank: `python -m tulu_kit.dpo CONFIG.yaml`."""

    train(launch.worker_config(DPOConfig, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
