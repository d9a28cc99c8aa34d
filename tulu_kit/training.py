"""The skeleton every training stage stands on: one set of fields, one path from config to job to result.

A training stage (``sft``, ``dpo``, ``reward``, ``ppo``, ``grpo``) is a config dataclass that extends
:class:`TrainingFields` (flat, so a notebook's parameters cell lists every field) and a module with
``train(cfg, callbacks)`` that builds its trainer and calls the functions below in this order::

    tokenizer = load_tokenizer(cfg)                 # + the chat template it trains with
    model = load_policy(cfg)                        # full weights, or a 4-bit base for QLoRA
    trainer = <TRL trainer>(args=training_arguments(cfg, TRLConfig, has_eval, ...), callbacks=callbacks(cfg))
    fit(trainer, cfg)                               # resumes from the last complete checkpoint of *this* run
    model_dir = save_model(trainer, cfg)            # adapters merged; atomically; every rank takes part
    return finish(trainer, cfg, "<stage>", model_dir, **numbers)   # metrics.json, log_history.jsonl, config.json

and ``run(cfg)`` is :func:`run_stage`: in this process (``launcher: none``) or launched on 1..N processes and
nodes (``tulu-kit <stage> CONFIG`` on each node with its ``machine_rank``). Each stage keeps only what it does
differently; the TRL trainer subclasses (and every private TRL name they rely on) live in
:mod:`tulu_kit.trainers`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tulu_kit import checkpoints, launch
from tulu_kit.config import from_dict, load_yaml, to_dict
from tulu_kit.io import atomic_write_json, write_jsonl
from tulu_kit.models import TULU_LORA_TARGETS
from tulu_kit.results import read_result, write_result

logger = logging.getLogger(__name__)


@dataclass
class TrainingFields:
    """The fields every training stage shares; a stage's config extends it (and may change defaults)."""

    # --- model and data
    model: str = ""  # the model to start from: local path or Hub id
    train_file: str = ""  # training data: JSONL (or Hub dataset id) in the stage's format
    out_dir: str = ""  # final model in <out_dir>/model, checkpoints in <out_dir>/checkpoints
    train_split: str = "train"  # split when train_file is a Hub dataset id
    eval_file: str = ""  # held-out data of the same format ("": the stage's own default)
    max_length: int = 2048  # tokens per example; longer ones are cut from the right
    chat_template: str = (
        ""  # a name from tulu_kit.data.templates.available_templates(); "": the tokenizer's own
    )
    # --- optimisation
    num_train_epochs: float = 1.0  # passes over the data (ignored when max_steps > 0)
    max_steps: int = -1  # optimizer steps; -1: run num_train_epochs
    learning_rate: float = 5e-7  # peak learning rate
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = "linear"  # decay after warmup
    warmup_ratio: float = 0.0  # fraction of the steps spent warming up linearly from 0
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 0.0  # gradient clipping; 0: off (the open-instruct default)
    per_device_train_batch_size: int = 1  # examples per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~20% slower
    bf16: bool = False  # bfloat16 mixed precision (GPU); False: fp32
    attn_implementation: str = "auto"  # auto: flash_attention_2 when installed on a GPU, else sdpa
    seed: int = 42  # data order, held-out split, LoRA and new heads' init, dropout
    # --- checkpoints and logging
    save_steps: int = 0  # write a resumable checkpoint every N steps; 0: only the final model
    save_total_limit: int = (
        2  # complete checkpoints kept (the oldest are deleted once a newer one is complete)
    )
    eval_steps: int = 0  # evaluate on the held-out data every N steps; 0: the stage's default
    logging_steps: int = 1  # log the loss and the stage's metrics every N steps
    report_to: str = "none"  # "none", "tensorboard", "wandb" or "tensorboard,wandb"
    resume: bool = False  # continue this run from its last complete checkpoint in <out_dir>/checkpoints
    # --- launching (tulu_kit.launch)
    launcher: Literal["accelerate", "torchrun", "none"] = "none"  # "none" trains in this process
    num_processes: int = 1  # processes in total (all machines)
    deepspeed: str = ""  # DeepSpeed JSON, e.g. recipes/deepspeed/zero3.json ("": plain DDP)
    num_machines: int = 1  # nodes; run the same command on each with its machine_rank
    machine_rank: int = 0  # rank of this node (0: the main node)
    main_process_ip: str = ""  # address of the main node (multi-node only)
    main_process_port: int = 29500  # port of the main node

    def __post_init__(self):
        for name in ("model", "train_file", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set")
        for name in ("learning_rate", "num_train_epochs", "warmup_ratio", "weight_decay", "max_grad_norm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("weight_decay", "max_grad_norm", "num_train_epochs", "save_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_length", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_processes", "num_machines", "logging_steps", "save_total_limit"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes {self.num_processes} is not divisible by num_machines "
                             f"{self.num_machines} (num_processes counts all machines)")  # fmt: skip
        if not 0 <= self.machine_rank < self.num_machines:
            raise ValueError(f"machine_rank must be in [0, {self.num_machines}), got {self.machine_rank}")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("num_machines > 1 needs main_process_ip (the address of machine_rank 0)")
        if self.launcher == "none" and (self.num_processes > 1 or self.num_machines > 1):
            raise ValueError("launcher 'none' trains in this one process: set launcher: accelerate (or "
                             "torchrun) for num_processes > 1 or num_machines > 1")  # fmt: skip

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


@dataclass
class LoRAFields(TrainingFields):
    """The shared fields plus LoRA / QLoRA adapters (Hu et al. 2021; Dettmers et al. 2023), for a stage that
    trains a causal LM (SFT, DPO, PPO, GRPO)."""

    use_lora: bool = False  # train low-rank adapters instead of all weights
    lora_r: int = 64  # adapter rank
    lora_alpha: int = 16  # scaling: the update is (alpha / r) * B A
    lora_dropout: float = 0.1  # dropout on the adapter input
    lora_target_modules: str = TULU_LORA_TARGETS  # comma-separated module names, or "all-linear"
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base (bitsandbytes); needs use_lora

    def __post_init__(self):
        super().__post_init__()
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(
                f"lora_r and lora_alpha must be at least 1, got {self.lora_r}, {self.lora_alpha}"
            )
        if not (math.isfinite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.load_in_4bit and not self.use_lora:
            raise ValueError("load_in_4bit (QLoRA) trains adapters: set use_lora: true")


@dataclass
class PreferenceFields(TrainingFields):
    """Fields of a stage trained on preference pairs (DPO, the reward model): the shared ones plus the pairs'."""

    model: str = "../runs/lab/sft/model"  # SFT model (local path or Hub id)
    train_file: str = "../runs/lab/data/preference.jsonl"  # JSONL of {"chosen", "rejected"} chats, or Hub id
    eval_fraction: float = 0.1  # share of train_file held out when eval_file is "" (preference accuracy)
    max_train_samples: int = 0  # keep the first N training pairs; 0: all
    bad_pairs: Literal["error", "drop"] = "error"  # identical/empty/different-prompt pairs: raise or drop

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_train_samples < 0:
            raise ValueError(f"max_train_samples must be >= 0, got {self.max_train_samples}")


# --------------------------------------------------------------------------- config -> launched job -> result


def run_stage(cfg: TrainingFields, module: str, train: Callable, callbacks=None) -> dict:
    """Train in this process (``launcher: none``) or launch ``python -m module`` on every process of this node.

    Returns the result the run wrote to ``<out_dir>/metrics.json`` (:mod:`tulu_kit.results`).
    """
    if cfg.launcher == "none":
        return train(cfg, callbacks)
    if callbacks:
        raise ValueError("callbacks only work in-process: set launcher='none'")
    launch.launch(module, to_dict(cfg), Path(cfg.out_dir), **launch_args(cfg))
    return read_result(cfg.out_dir) if cfg.machine_rank == 0 else {}


def launch_args(cfg: TrainingFields) -> dict:
    """The launcher's keywords (:func:`tulu_kit.launch.build_command`) from a training config."""
    return dict(
        launcher=cfg.launcher,
        num_processes=cfg.num_processes,
        deepspeed=launch.resolve_path(cfg.deepspeed),
        num_machines=cfg.num_machines,
        machine_rank=cfg.machine_rank,
        main_process_ip=cfg.main_process_ip,
        main_process_port=cfg.main_process_port,
        mixed_precision="bf16" if cfg.bf16 else "no",
    )


def load_config(cls: type, path: str | Path, overrides: list[str] = ()) -> Any:
    """A stage config from a YAML file of its fields plus ``key=value`` overrides (``tulu-kit <stage> CONFIG``)."""
    from tulu_kit.config import ConfigError, parse_value

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {cls.__name__} fields")
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        data[key] = parse_value(text)
    return from_dict(cls, data, str(path))


def worker_main(cls: type, train: Callable, argv: list[str] | None = None, callbacks=None) -> int:
    """Entry point of a launched rank: ``python -m tulu_kit.<stage> CONFIG.yaml``."""
    cfg = launch.worker_config(cls, sys.argv[1:] if argv is None else argv)
    train(cfg, callbacks)
    return 0


# --------------------------------------------------------------------------- the pieces a stage's train() calls


def load_tokenizer(cfg: TrainingFields):
    """The model's tokenizer with the chat template the stage trains with (``chat_template: ""`` keeps its own)."""
    from tulu_kit import models
    from tulu_kit.data.templates import set_chat_template

    tokenizer = models.load_tokenizer(cfg.model)
    if cfg.chat_template:
        set_chat_template(tokenizer, cfg.chat_template)
    return tokenizer


def load_policy(cfg: TrainingFields, add_adapters: bool = False):
    """The causal LM to train: full weights, or a frozen (4-bit) base; with ``add_adapters`` LoRA is applied here
    (DPO hands its LoRA config to TRL instead, which then uses the adapter-free base as the reference)."""
    from tulu_kit import models

    model = models.load_model_for_training(
        cfg.model,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        load_in_4bit=getattr(cfg, "load_in_4bit", False),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    if add_adapters and getattr(cfg, "use_lora", False):
        model = models.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    return model


def lora_config(cfg: TrainingFields):
    """PEFT's LoraConfig for ``cfg`` (None without ``use_lora``)."""
    from tulu_kit import models

    if not getattr(cfg, "use_lora", False):
        return None
    return models.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)


def training_arguments(cfg: TrainingFields, trl_config_cls: type, has_eval: bool, **stage_args):
    """TRL's config (a ``TrainingArguments``) with the fields every stage sets alike, plus the stage's own."""
    import torch

    # read by transformers' TensorBoard callback when the Trainer builds it, so set before the Trainer exists
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(cfg.out_dir) / "tensorboard")
    report_to = [r.strip() for r in cfg.report_to.split(",") if r.strip() and r.strip() != "none"]
    common = dict(
        output_dir=str(Path(cfg.out_dir) / "checkpoints"),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name for it
        bf16=cfg.bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=None,  # the kit rotates, after the new checkpoint is complete (tulu_kit.checkpoints)
        eval_strategy="steps" if has_eval and cfg.eval_steps > 0 else "no",
        eval_steps=cfg.eval_steps if cfg.eval_steps > 0 else None,
        report_to=report_to or "none",
        deepspeed=launch.resolve_path(cfg.deepspeed) or None,
        dataloader_num_workers=0,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )
    if "max_length" in {f for f in getattr(trl_config_cls, "__dataclass_fields__", {})}:
        common["max_length"] = None  # the kit's tokenizer already cut at cfg.max_length
    return trl_config_cls(**{**common, **stage_args})


def callbacks(cfg: TrainingFields, extra=None) -> list:
    """The callbacks every stage's trainer gets: the checkpoint protocol (:mod:`tulu_kit.checkpoints`) and a stop
    on a non-finite logged loss."""
    return [checkpoints.complete_checkpoint_callback(to_dict(cfg), cfg.save_total_limit), finite_loss_callback(),
            *(extra or [])]  # fmt: skip


def finite_loss_callback():
    """A TrainerCallback that stops training with an error naming the step when a logged loss is NaN or infinite
    (a NaN loss would otherwise train on, and save, NaN weights)."""
    from transformers import TrainerCallback

    class FiniteLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if isinstance(loss, (int, float)) and not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} logged at step {state.global_step}; stopping "
                                         "(the last complete checkpoint is before it)")  # fmt: skip

    return FiniteLoss()


def summarise_logs(trainer, cfg: TrainingFields, rows: int = 10) -> None:
    """A train cell's output: the Trainer's progress bar without its line per logged step (a dict under tqdm, a
    table row in a notebook's kernel: ~250 lines for a quickstart SFT), and :func:`log_summary`'s ~``rows`` rows
    instead. Every logged step stays in ``<out_dir>/log_history.jsonl``."""
    import transformers.trainer as hf_trainer
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    trainer.pop_callback(PrinterCallback)  # disable_tqdm's stand-in: a line per log, no bar
    default = hf_trainer.DEFAULT_PROGRESS_CALLBACK  # tqdm's bar, or the HTML one in a notebook's kernel
    if trainer.pop_callback(default) is not None:

        class BarOnly(default):
            on_log = TrainerCallback.on_log  # no line per log

            def on_train_begin(self, args, state, control, **kwargs):
                super().on_train_begin(args, state, control, **kwargs)
                if getattr(self, "training_tracker", None) is not None:  # the HTML bar: no empty loss table
                    self.training_tracker.inner_table = None

            def on_evaluate(self, args, state, control, **kwargs):
                if not hasattr(self, "training_tracker"):  # tqdm: closes the evaluation's bar, prints nothing
                    return super().on_evaluate(args, state, control, **kwargs)
                # the HTML bar: no row (or, before training, no table) of losses per evaluation; log_summary
                # prints the held-out rows
                if self.training_tracker is not None:
                    self.training_tracker.remove_child()
                    self._force_next_update = True
                elif self.prediction_bar is not None:
                    self.prediction_bar.close()
                self.prediction_bar = None

        trainer.add_callback(BarOnly)
    trainer.add_callback(log_summary(Path(cfg.out_dir) / "log_history.jsonl", rows))


def log_summary(history: Path, rows: int = 10):
    """A TrainerCallback printing about ``rows`` evenly spaced rows of the training log (step, loss, reward where
    the stage logs one, learning rate, time) and of the held-out evaluations, then the first and last loss."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    def say(line: str) -> None:  # above the progress bar, as the Trainer's own line per log was
        tqdm.write(line)
        sys.stdout.flush()

    class LogSummary(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.stride = time.perf_counter(), max(1, math.ceil(state.max_steps / rows))
            self.due = {"loss": 0, "eval_loss": 0}  # the next step at which each kind of log gets a row
            if state.is_world_process_zero:
                say(f"training {state.max_steps} steps: a row every {self.stride} steps here, every logged step in "
                    f"{history}")  # fmt: skip

        def on_log(self, args, state, control, logs=None, **kwargs):
            step, last = state.global_step, state.max_steps
            for key in self.due:
                if not state.is_world_process_zero or key not in (logs or {}):
                    continue
                if step >= self.due[key] or step >= last:
                    self.due[key] = (step // self.stride + 1) * self.stride
                    row = f"step {step:>{len(str(last))}}/{last}  "
                    if key == "eval_loss":
                        row += f"held-out loss {logs[key]:.4g}"
                    else:
                        row += f"loss {logs[key]:.4g}"
                        for name, shown in (("reward", "reward {:.4g}"), ("learning_rate", "lr {:.2e}")):
                            row += (
                                f"  {shown.format(logs[name])}" if isinstance(logs.get(name), float) else ""
                            )
                    say(f"{row}  {time.perf_counter() - self.start:6.1f} s")

        def on_train_end(self, args, state, control, **kwargs):
            losses = [h["loss"] for h in state.log_history if isinstance(h.get("loss"), (int, float))]
            if state.is_world_process_zero and losses:
                say(f"done: {state.global_step} steps in {time.perf_counter() - self.start:.1f} s, loss "
                    f"{losses[0]:.4g} -> {losses[-1]:.4g}")  # fmt: skip

    return LogSummary()


def fit(trainer, cfg: TrainingFields) -> float:
    """``trainer.train()``, resuming (with ``resume``) from the last complete checkpoint of this same run; a
    checkpoint of the run's last step (a kill during the final save) is loaded, not trained past.

    Returns the wall time of training in seconds.
    """
    from tulu_kit import trainers

    out = Path(cfg.out_dir)
    checkpoint = (
        checkpoints.last_complete_checkpoint(out / "checkpoints", to_dict(cfg)) if cfg.resume else None
    )
    start = time.perf_counter()
    if checkpoint and trainers.is_finished(checkpoint):
        logger.info("%s holds the run's last step: loading it, nothing left to train", checkpoint)
        trainers.load_finished_checkpoint(trainer, checkpoint)
        return time.perf_counter() - start
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    summarise_logs(trainer, cfg)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return time.perf_counter() - start


def save_model(trainer, cfg: TrainingFields, name: str = "model", merge_adapter: bool = True) -> Path:
    """Write the final model to ``<out_dir>/<name>`` in ``save_pretrained`` layout, atomically; return it.

    With LoRA the adapter goes to ``<out_dir>/adapter`` and (``merge_adapter``) is merged into its base
    (QLoRA: into the dequantized NF4 base it was trained against). Every rank calls it: under ZeRO-3 saving
    gathers the weights from all ranks.
    """
    from tulu_kit import models

    out, main, config = Path(cfg.out_dir), trainer.accelerator.is_main_process, to_dict(cfg)
    use_lora = getattr(cfg, "use_lora", False)
    target = out / ("adapter" if use_lora else name)
    with launch.atomic_dir(target, main) as tmp:
        trainer.save_model(str(tmp))  # weights + tokenizer (chat_template.jinja)
        if main:
            atomic_write_json(tmp / checkpoints.CONFIG_NAME, config)
    if use_lora:
        if merge_adapter and main:
            merged = models.merge_lora(cfg.model, target, out / name, qlora=cfg.load_in_4bit, dtype=cfg.dtype)
            atomic_write_json(merged / checkpoints.CONFIG_NAME, config)
        target = out / name if merge_adapter else target
    trainer.accelerator.wait_for_everyone()
    return target


TOY_TASK = "synthetic_arithmetic"  # an RL stage's train_file naming the offline toy task


def load_rlvr_rows(cfg) -> list[dict]:
    """The one RLVR loader of the RL stages: the toy task (``synthetic_size`` rows), a JSONL file or a Hub dataset
    (``train_split``), cut to ``max_train_samples`` where the stage has it, every row checked by
    :func:`tulu_kit.rewards.check_rows` (an error names the file, line and key) before any model loads."""
    from tulu_kit import rewards
    from tulu_kit.io import read_rows

    if cfg.train_file == TOY_TASK:
        from tulu_kit.data.synthetic import synthetic_arithmetic

        rows = synthetic_arithmetic(cfg.synthetic_size, seed=cfg.seed)
    else:
        rows = read_rows(cfg.train_file, cfg.train_split)
    limit = getattr(cfg, "max_train_samples", 0)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"{cfg.train_file}: no RLVR rows")
    rewards.check_rows(rows, cfg.train_file)
    for n, row in enumerate(rows, 1):
        if not all(isinstance(m, dict) for m in row["messages"]) or not rlvr_prompt(row):
            raise ValueError(
                f"{cfg.train_file}: line {n}: key 'messages' holds no user turn ({{role, content}})"
            )
    return rows


def rlvr_prompt(row: dict) -> list[dict]:
    """The prompt of an RLVR row: its messages without trailing assistant turns (a reference answer)."""
    messages = list(row["messages"])
    while messages and messages[-1].get("role") == "assistant":
        messages.pop()
    return messages


def reward_summary(rewards: list[float], kls: list[float]) -> dict:
    """The RL stages' (PPO, GRPO) one result vocabulary: first and last logged mean reward, the mean reward of the
    first and last quarter of the logged steps, and the last and largest logged KL to the reference."""
    nan = float("nan")
    q = max(1, len(rewards) // 4)
    return {
        "reward_first": rewards[0] if rewards else nan,
        "reward_last": rewards[-1] if rewards else nan,
        "reward_first_quarter": sum(rewards[:q]) / q if rewards else nan,
        "reward_last_quarter": sum(rewards[-q:]) / q if rewards else nan,
        "kl_last": kls[-1] if kls else nan,
        "kl_max": max(kls) if kls else nan,
    }


def loss_curve(log_history: list[dict], key: str = "loss") -> tuple[float, float]:
    """(first, last) logged value of ``key`` in a trainer's log history (NaN when never logged)."""
    values = [h[key] for h in log_history if key in h]
    return (values[0], values[-1]) if values else (float("nan"), float("nan"))


def peak_memory_mb() -> float:
    """Peak CUDA memory, or peak process RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def finish(trainer, cfg: TrainingFields, stage: str, model_dir: Path, runtime_s: float, **numbers) -> dict:
    """Rank 0 writes ``log_history.jsonl``, ``config.json`` and the result (``metrics.json``); every rank returns it.

    The result holds what every training stage reports (steps, first and last loss, parameter counts, world
    size, peak memory, runtime) and the stage's own ``numbers``.
    """
    from tulu_kit import models

    out = Path(cfg.out_dir)
    history = [dict(h) for h in trainer.state.log_history]
    first, last = loss_curve(history)
    trainable, total = models.count_parameters(trainer.model)
    steps = trainer.state.global_step
    fields = dict(
        train_steps=steps,
        first_loss=first,
        last_loss=last,
        trainable_params=trainable,
        total_params=total,
        world_size=trainer.accelerator.num_processes,
        peak_memory_mb=round(peak_memory_mb(), 1),
        train_runtime_s=round(runtime_s, 3),
        steps_per_second=round(steps / runtime_s, 4) if runtime_s > 0 else 0.0,
        **numbers,
    )
    result = {"stage": stage, "model_dir": str(model_dir), **fields}
    if trainer.accelerator.is_main_process:
        write_jsonl(out / "log_history.jsonl", history)
        atomic_write_json(out / "config.json", to_dict(cfg))
        result = write_result(out, stage, model_dir, **fields)
    trainer.accelerator.wait_for_everyone()
    return result
