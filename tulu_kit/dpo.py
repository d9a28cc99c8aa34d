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

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tulu_kit import plots, trainers, training
from tulu_kit.training import LoRAFields, PreferenceFields

logger = logging.getLogger(__name__)

TRL_LOSS = {"dpo": "sigmoid", "dpo_norm": "sigmoid_norm", "ipo": "ipo"}  # kit name -> TRL DPOConfig.loss_type
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")  # fmt: skip


@dataclass
class DPOConfig(PreferenceFields, LoRAFields):
    """One DPO run: the shared training fields (:class:`tulu_kit.training.TrainingFields`), the pairs', and DPO's."""

    out_dir: str = "../runs/lab/dpo"  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    # --- the preference loss (tulu_kit.losses)
    loss_type: Literal["dpo", "dpo_norm", "simpo", "wpo", "ipo"] = "dpo_norm"  # Tulu 3: dpo_norm; Tulu 2: dpo
    beta: float = 5.0  # KL strength β (τ for IPO); Tulu 3: 5 with dpo_norm, Tulu 2: 0.1 with dpo
    gamma_beta_ratio: float = 0.3  # SimPO target margin γ/β
    label_smoothing: float = 0.0  # conservative DPO ε: assumed share of flipped preference labels
    reference: Literal["cached", "model"] = "cached"  # cached log-probs, or a reference model in memory
    ref_cache_dir: str = ""  # where cached reference log-probs live; "": <out_dir>/ref_cache
    # --- defaults DPO changes
    learning_rate: float = 5e-7  # peak learning rate (Tulu 2 and Tulu 3 8B DPO: 5e-7)
    warmup_ratio: float = 0.1  # fraction of the steps spent warming up linearly from 0
    lora_dropout: float = 0.0  # dropout on the adapter input
    eval_steps: int = 0  # evaluate the held-out pairs every N steps; 0: before and after training only

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("label_smoothing has no meaning for loss_type 'ipo'")

    @property
    def own_loss(self) -> bool:
        """Whether the loss comes from tulu_kit.losses rather than TRL's DPOTrainer."""
        return self.loss_type not in TRL_LOSS or self.label_smoothing > 0


# --------------------------------------------------------------------------- model and trainer


def trl_args(cfg: DPOConfig, has_eval: bool):
    """Our config -> TRL's DPOConfig (TrainingArguments)."""
    from trl import DPOConfig as TRLDPOConfig

    return training.training_arguments(
        cfg,
        TRLDPOConfig,
        has_eval,
        loss_type=[TRL_LOSS.get(cfg.loss_type, "sigmoid")],  # unused when cfg.own_loss
        beta=cfg.beta,
        precompute_ref_log_probs=cfg.reference == "cached",
        # the held-out metrics before training: inside train(), since an evaluate() before it leaves DeepSpeed
        # with an inference engine that train() then cannot step (ZeRO-3: 'NoneType' has no 'backward')
        eval_on_start=has_eval,
    )


def build_trainer(cfg: DPOConfig, callbacks=None):
    """Tokenizer, checked and tokenized pairs, policy and trainer for `cfg`; returns (trainer, data info)."""
    from datasets import Dataset

    from tulu_kit.data.pairs import split_pairs
    from tulu_kit.data.tokenize import tokenize_preference

    # ---- data: check pairs, hold some out, tokenize prompt/chosen/rejected with the model's chat template
    train_pairs, eval_pairs, dropped = split_pairs(cfg)
    tokenizer = training.load_tokenizer(cfg)
    train_rows, stats = tokenize_preference(train_pairs, tokenizer, cfg.max_length, source=cfg.train_file)
    eval_rows, _ = tokenize_preference(
        eval_pairs, tokenizer, cfg.max_length, source=cfg.eval_file or "held-out"
    )
    if not train_rows:
        raise ValueError(f"{cfg.train_file}: no pair left after tokenization (max_length {cfg.max_length})")
    info = {"n_train": len(train_rows), "n_eval": len(eval_rows), "dropped": dropped,
            "tokenize": stats.summary()}  # fmt: skip
    # ---- model: full weights, or LoRA on a (4-bit) frozen base; args first: ZeRO-3 shards while loading
    args = trl_args(cfg, has_eval=bool(eval_rows))
    model = training.load_policy(cfg)
    # ---- trainer: the reference log-probs are cached while it is built (tulu_kit.trainers)
    cache_dir = Path(cfg.ref_cache_dir or Path(cfg.out_dir) / "ref_cache")
    trainer_cls = type("KitDPOTrainer", (trainers.dpo_trainer_class(),), {"kit": cfg, "cache_dir": cache_dir})
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=training.lora_config(cfg),  # given to TRL: the reference is the base, adapter disabled
        callbacks=training.callbacks(cfg, callbacks),
    )
    return trainer, info


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
        plots.save_png(fig, path, dpi=110)
    return fig


# --------------------------------------------------------------------------- run


def train(cfg: DPOConfig, callbacks=None) -> dict:
    """Train in this process (one rank of a launched job, or alone); rank 0 writes the model and the result."""
    trainer, info = build_trainer(cfg, callbacks)
    has_eval = trainer.eval_dataset is not None

    # ---- train, with held-out preference accuracy and margins before (eval_on_start: the first eval log, also
    # after a resume, whose history comes from the checkpoint) and after
    runtime = training.fit(trainer, cfg)
    before = next((h for h in trainer.state.log_history if "eval_loss" in h), {}) if has_eval else {}
    after = trainer.evaluate() if has_eval else {}

    # ---- save: model, metrics plot, result
    model_dir = training.save_model(trainer, cfg)
    if trainer.accelerator.is_main_process:  # saved, and closed so that a notebook does not show it here too
        import matplotlib.pyplot as plt

        plt.close(plot_metrics(trainer.state.log_history, Path(cfg.out_dir) / "metrics.png"))
    return training.finish(
        trainer, cfg, "dpo", model_dir, runtime, loss_type=cfg.loss_type, reference=cfg.reference, **info,
        eval_before=_pref_metrics(before), eval_after=_pref_metrics(after),
    )  # fmt: skip


def run(cfg: DPOConfig, callbacks=None) -> dict:
    """The stage: train here (`launcher="none"`) or launch `train` on `num_processes` processes."""
    return training.run_stage(cfg, "tulu_kit.dpo", train, callbacks)


def _pref_metrics(logs: dict) -> dict:
    return {k: logs[f"eval_{k}"] for k in METRICS if f"eval_{k}" in logs}


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: `python -m tulu_kit.dpo CONFIG.yaml`."""
    return training.worker_main(DPOConfig, train, argv, callbacks)


if __name__ == "__main__":
    sys.exit(main())
