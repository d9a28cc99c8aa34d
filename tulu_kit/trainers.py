"""TRL's private surface, in one place: the kit's trainer subclasses and every private name they rely on.

TRL (pinned exactly in pyproject.toml) does the training loops; the kit overrides or reads a few of its
private methods and attributes where TRL cannot express a Tulu choice:

* :func:`sft_trainer_class` — ``SFTTrainer`` with open-instruct's per-micro-batch loss reduction
  (``reduce_loss: mean|sum``); TRL 1.16 always divides by the tokens of the whole accumulated batch. It forwards
  a micro-batch in ``length_groups`` groups of similar-length rows (:func:`length_groups`).
* :func:`dpo_trainer_class` — ``DPOTrainer`` with the kit's reference log-prob cache (keyed by data and
  weights, shared across runs) and the losses TRL lacks (SimPO, open-instruct's WPO weight, label smoothing).
* :func:`load_finished_checkpoint` — a run killed after its last checkpoint (during the final save) resumes into
  that checkpoint's weights; ``Trainer.train(resume_from_checkpoint=...)`` would train one step past ``max_steps``
  when the run ends mid-epoch (transformers 5 checks ``max_steps`` only after a step).
* :func:`trl_dpo_loss`, :func:`trl_reward_loss` — TRL's own loss code run on given tensors, the reference the
  kit's losses are tested against.

Upgrading TRL: change the pin, run ``pytest tests/test_trl_surface.py`` (it names each entry of
:data:`PRIVATE_SURFACE` that moved), fix this file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import types
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from tulu_kit import losses
from tulu_kit.io import atomic_path

logger = logging.getLogger(__name__)
# TRL 1.16 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: the warning is TRL's, not the
# user's to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# (class path, attribute) for every private TRL name this module overrides, calls or reads.
PRIVATE_SURFACE: list[tuple[str, str]] = [
    ("trl.SFTTrainer", "_metrics"),  # read: the kit logs nll, token accuracy and trained tokens into it
    ("trl.DPOTrainer", "_prepare_dataset"),  # overridden: the kit tokenizes with its own chat template
    ("trl.DPOTrainer", "_precompute_ref_logps"),  # overridden: the reference cache
    ("trl.DPOTrainer", "_precompute_model_hash"),  # read: part of the cache key
    ("trl.DPOTrainer", "_precompute_engine"),  # read/written: one DeepSpeed engine for reference passes
    ("trl.DPOTrainer", "_compute_loss"),  # overridden for the kit's losses; called for TRL's
    ("trl.DPOTrainer", "_metrics"),  # written: rewards, margins, accuracies, log-probs
    ("trl.models", "prepare_deepspeed"),  # called: wraps the model for reference passes under ZeRO
    (
        "transformers.Trainer",
        "_load_from_checkpoint",
    ),  # called: a finished run's last checkpoint, not retrained
]
# public names the kit relies on, with the meaning it assumes
PUBLIC_SURFACE: list[tuple[str, str]] = [
    ("trl.DPOTrainer", "compute_ref_log_probs"),
    ("trl.DPOTrainer", "precompute_ref_logps"),  # set in __init__ from args.precompute_ref_log_probs
    ("trl.SFTTrainer", "compute_loss"),
    ("trl.RewardTrainer", "compute_loss"),
]


# --------------------------------------------------------------------------- SFT


@functools.cache
def sft_trainer_class():
    """``TuluSFTTrainer`` (built lazily: importing trl takes seconds)."""
    from trl import SFTTrainer

    class TuluSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is reduced per micro-batch as open-instruct does (``reduce_loss``)."""

        # our loss is per micro-batch: the Trainer divides it by the number of accumulation steps
        loss_is_scaled_for_ga = False

        def __init__(self, *args, reduce_loss: str = "mean", length_groups: int = 1, **kwargs):
            self.reduce_loss, self.length_groups = reduce_loss, length_groups
            super().__init__(*args, **kwargs)
            if length_groups > 1 and (self.accelerator.num_processes > 1 or self.is_deepspeed_enabled):
                # DDP and ZeRO reduce gradients once per forward: several forwards before one backward break them
                logger.warning(
                    "length_groups %d: one forward pass per micro-batch here (%d processes%s): DDP and DeepSpeed "
                    "expect one forward a backward", length_groups, self.accelerator.num_processes,
                    ", DeepSpeed" if self.is_deepspeed_enabled else "",
                )  # fmt: skip
                self.length_groups = 1

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs = {**inputs, "use_cache": False}
            # the loss alone (training; evaluation too, where only the loss is asked for) from groups of rows
            groups = [inputs] if return_outputs else length_groups(inputs, self.length_groups)
            nll_sum = n_tokens = n_top1 = 0
            for group in groups:
                # TRL's fused head returns log p(label) per position (0 where the label is -100) without the logits
                outputs = model(**group, fused_lm_head=True)
                nll_sum = nll_sum - outputs.log_probs.sum()
                n_tokens = n_tokens + outputs.label_mask.sum()
                n_top1 = n_top1 + outputs.is_top1.sum()
            loss = nll_sum if self.reduce_loss == "sum" else nll_sum / n_tokens.clamp(min=1)
            gathered = self.accelerator.gather_for_metrics(
                torch.stack([nll_sum.detach().float(), n_tokens.float(), n_top1.float()])[None]
            ).sum(0)
            denom = gathered[1].clamp(min=1)
            self._metrics[mode]["nll"].append((gathered[0] / denom).item())
            self._metrics[mode]["mean_token_accuracy"].append((gathered[2] / denom).item())
            self._metrics[mode]["trained_tokens"].append(gathered[1].item())
            return (loss, outputs) if return_outputs else loss

    return TuluSFTTrainer


def length_groups(inputs: dict, n: int) -> list[dict]:
    """A right-padded batch (``attention_mask``) as ``n`` groups of rows sorted by length, each cut to its longest
    row: their summed token losses are the whole batch's, with less padding computed. Unchanged when ``n`` is 1,
    for one row, or for a batch without a right-padded ``attention_mask`` (packed rows carry ``position_ids``)."""
    mask = inputs.get("attention_mask")
    if n <= 1 or mask is None or mask.dim() != 2 or mask.size(0) < 2 or "position_ids" in inputs:
        return [inputs]
    right_padded = not bool((mask[:, 1:] > mask[:, :-1]).any())  # no 0 before a 1 (left padding, a hole)
    if not right_padded:
        return [inputs]
    lengths = mask.sum(1)
    groups = []
    for rows in torch.argsort(lengths, stable=True).tensor_split(min(n, mask.size(0))):
        width = int(lengths[rows].max())
        groups.append(
            {
                k: v[rows, :width] if torch.is_tensor(v) and v.shape == mask.shape else v
                for k, v in inputs.items()
            }
        )
    return groups


# --------------------------------------------------------------------------- DPO: reference cache and losses


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
def dpo_trainer_class():
    """TRL's DPOTrainer with the kit's reference cache and the losses TRL lacks (built lazily: TRL is slow).

    A stage makes a subclass with two class attributes: ``kit`` (its DPO config: loss_type, beta,
    label_smoothing, gamma_beta_ratio, model, max_length, bf16, ``own_loss``) and ``cache_dir``.
    """
    from accelerate.utils import broadcast_object_list
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from trl import DPOTrainer
    from trl.models import prepare_deepspeed

    class KitDPOTrainer(DPOTrainer):
        kit: Any
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


# --------------------------------------------------------------------------- TRL's losses on given tensors


def trl_dpo_loss(
    chosen_token_logps: list[list[float]],
    rejected_token_logps: list[list[float]],
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    loss_type: str,
    beta: float,
    use_weighting: bool = False,
) -> float:
    """TRL's ``DPOTrainer._compute_loss`` on fixed per-token log-probs of the responses (a stub model returns
    them): the reference :mod:`tulu_kit.losses` is checked against."""
    from accelerate import Accelerator
    from trl import DPOTrainer

    rows = chosen_token_logps + rejected_token_logps
    prompt_len, width = 2, 2 + max(len(r) for r in rows)
    log_probs = torch.zeros(len(rows), width - 1)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        completion_mask[i, prompt_len : prompt_len + len(r)] = 1
        log_probs[i, prompt_len - 1 : prompt_len - 1 + len(r)] = torch.tensor(r)
    zeros = torch.zeros_like(log_probs)
    outputs = types.SimpleNamespace(
        log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), log_sum_sq_probs=zeros
    )
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), accelerator=Accelerator(cpu=True), aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=use_weighting,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.ones(len(rows), width, dtype=torch.long),
        "attention_mask": torch.ones(len(rows), width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False).item()


def trl_reward_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, margin=None) -> float:
    """TRL's ``RewardTrainer.compute_loss`` on given rewards (a stub model returns them as logits)."""
    from accelerate import Accelerator
    from trl import RewardTrainer

    stub = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), accelerator=Accelerator(cpu=True), _tp_size=1,
        _total_train_tokens=0, args=types.SimpleNamespace(center_rewards_coefficient=None),
        _metrics={"eval": defaultdict(list)},
    )  # fmt: skip
    n = len(rewards_chosen)
    inputs = {"input_ids": torch.ones(2 * n, 2, dtype=torch.long), "attention_mask": torch.ones(2 * n, 2)}
    if margin is not None:
        inputs["margin"] = margin
    logits = torch.cat([rewards_chosen, rewards_rejected])[:, None]
    return RewardTrainer.compute_loss(stub, lambda **kw: types.SimpleNamespace(logits=logits), inputs).item()


# --------------------------------------------------------------------------- a finished run's checkpoint


def is_finished(checkpoint: str | Path) -> bool:
    """Whether a Trainer checkpoint holds the run's last step (its ``trainer_state.json``: global_step >= max_steps)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def load_finished_checkpoint(trainer, checkpoint: str | Path) -> None:
    """The weights and state (log history, global step) of a finished run's last checkpoint, without training."""
    from transformers import TrainerState

    if trainer.is_deepspeed_enabled:  # the engine exists only inside train(); its checkpoint needs it
        raise RuntimeError(f"{checkpoint} is this run's last step; under DeepSpeed the kit cannot load it without "
                           "training one more step. Its weights are in that folder; or delete it to retrain "
                           "from the checkpoint before.")  # fmt: skip
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
