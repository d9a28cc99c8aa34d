"""The sft stage: the loss against hand-computed masked cross-entropy, mean vs sum, training, resume, LoRA, QLoRA.

All runs are in-process (``launcher="none"``) on the tiny model and the quickstart mix (``synthetic_sft``),
except the kill-and-resume test, whose first run is a subprocess that kills itself with SIGKILL.
Multi-process runs are in ``tests/test_launch.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tulu_kit.config import ConfigError, from_dict
from tulu_kit.io import read_jsonl, write_jsonl
from tulu_kit.models import TULU_LORA_TARGETS
from tulu_kit.sft import SFTConfig, build_trainer, masked_nll, run

REPO = Path(__file__).resolve().parents[1]

# The tiny model (tulu_kit.models.build_tiny_model defaults) by hand: hidden 64, MLP 256, 2 layers, 4 query heads
# and 2 key/value heads of 16 dims, untied embeddings over VOCAB tokens.
VOCAB = (
    1024 + 3
)  # the tiny tokenizer's vocabulary plus the three chat tokens (<|system|>, <|user|>, <|assistant|>)
_H, _M, _KV, _LAYERS = 64, 256, 32, 2
TINY_PARAMS = 2 * VOCAB * _H + _H + _LAYERS * (2 * _H * _H + 2 * _H * _KV + 3 * _H * _M + 2 * _H)
# LoRA r=4 on q,k,v,o,gate,up,down: r x (in + out) per matrix
LORA_R4_PARAMS = _LAYERS * 4 * ((_H + _H) + 2 * (_H + _KV) + (_H + _H) + 2 * (_H + _M) + (_M + _H))


def _config(tiny_model, tmp_path, train_file, **overrides) -> SFTConfig:
    base = dict(
        model=str(tiny_model),
        train_file=str(train_file),
        out_dir=str(tmp_path / "sft"),
        max_length=128,
        max_steps=4,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        per_device_train_batch_size=4,
        report_to="none",
        launcher="none",
    )
    return SFTConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    """The quickstart SFT mix (the data stage's synthetic source), 64 conversations."""
    from tulu_kit.data.synthetic import synthetic_sft

    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", synthetic_sft(64, seed=0))


def _hand_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum over positions t with label[t+1] != -100 of -log softmax(logits[t])[label[t+1]], by explicit loops."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            row = logits[b, t].double()
            total += float(torch.logsumexp(row, 0) - row[target])
            count += 1
    return total, count


# --------------------------------------------------------------------------- config


def test_config_is_strict():
    with pytest.raises(ConfigError, match="learning_rat"):
        from_dict(SFTConfig, {"learning_rat": 1e-4}, "recipe.yaml")
    with pytest.raises(ConfigError, match="use_lora"):
        from_dict(SFTConfig, {"load_in_4bit": True}, "recipe.yaml")
    with pytest.raises(ConfigError, match="reduce_loss"):
        from_dict(SFTConfig, {"reduce_loss": "average"}, "recipe.yaml")


# --------------------------------------------------------------------------- the loss


def test_masked_nll_matches_hand_computed():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    labels[1, 5:] = -100
    total, count = _hand_nll(logits, labels)
    assert masked_nll(logits, labels, "sum").item() == pytest.approx(total, rel=1e-5)
    assert masked_nll(logits, labels, "mean").item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("reduce_loss", ["sum", "mean"])
def test_trainer_loss_is_masked_cross_entropy(tiny_model, tmp_path, mix, reduce_loss):
    """The loss the trainer backpropagates on a real batch equals masked CE computed by hand from full logits."""
    cfg = _config(tiny_model, tmp_path, mix, reduce_loss=reduce_loss)
    trainer, _ = build_trainer(cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompts masked, answers kept
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = _hand_nll(logits, batch["labels"])
    expected = total if reduce_loss == "sum" else total / count
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("reduce_loss", ["sum", "mean"])
def test_length_groups_give_the_one_pass_loss_and_gradient_on_less_padding(
    tiny_model, tmp_path, mix, reduce_loss
):
    """A micro-batch forwarded as 3 groups of similar-length rows: the loss and every gradient are the one pass's,
    and the groups hold fewer (padded) tokens than the batch."""
    from tulu_kit.trainers import length_groups

    cfg = _config(
        tiny_model, tmp_path, mix, reduce_loss=reduce_loss, per_device_train_batch_size=8, length_groups=3
    )
    trainer, _ = build_trainer(cfg)
    assert trainer.length_groups == 3
    batch = dict(next(iter(trainer.get_train_dataloader())))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # rows of different lengths: something to cut
    groups = length_groups(batch, 3)
    assert [len(g["input_ids"]) for g in groups] == [3, 3, 2]
    assert sum(g["input_ids"].numel() for g in groups) < batch["input_ids"].numel()
    assert sorted(int(n) for g in groups for n in g["attention_mask"].sum(1)) == sorted(lengths.tolist())
    model = trainer.model.train()
    results = []
    for n in (1, 3):
        trainer.length_groups = n
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten().clone() for p in model.parameters()])))
    (one_loss, one_grad), (split_loss, split_grad) = results
    assert split_loss == pytest.approx(one_loss, rel=1e-5)
    nll, tokens = trainer._metrics["train"]["nll"], trainer._metrics["train"]["trained_tokens"]
    assert nll[-1] == pytest.approx(nll[-2], rel=1e-5) and tokens[-1] == tokens[-2] > 0  # logged as one pass
    torch.testing.assert_close(split_grad, one_grad, rtol=1e-4, atol=1e-6 * one_grad.abs().max().item())
    # left padding, or packed rows (position_ids), are forwarded as they are
    left = {**batch, "attention_mask": batch["attention_mask"].flip(1)}
    assert (
        length_groups(left, 3) == [left]
        and length_groups({**batch, "position_ids": 0}, 3)[0]["position_ids"] == 0
    )
    with pytest.raises(ValueError, match="length_groups must be at least 1"):
        _config(tiny_model, tmp_path, mix, length_groups=0)


def _grads_after_one_step(tiny_model, tmp_path, train_file, reduce_loss) -> torch.Tensor:
    from transformers import TrainerCallback

    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads["g"] = torch.cat([p.grad.flatten().clone() for p in model.parameters()])

    cfg = _config(
        tiny_model, tmp_path / reduce_loss, train_file, reduce_loss=reduce_loss, max_steps=1,
        per_device_train_batch_size=1, gradient_accumulation_steps=2,
    )  # fmt: skip
    run(cfg, callbacks=[Grab()])
    return grads["g"]


def _grad_of(model, row, scale) -> torch.Tensor:
    model.zero_grad()
    ids = torch.tensor([row["input_ids"]])
    loss = masked_nll(model(input_ids=ids).logits, torch.tensor([row["labels"]]), "sum") * scale
    loss.backward()
    return torch.cat([p.grad.flatten().clone() for p in model.parameters()])


def test_mean_and_sum_weight_tokens_as_documented(tiny_model, tmp_path):
    """Two examples of very different answer lengths in one accumulated step (batch 1 x 2 micro-batches).

    mean: g = (grad L1 / n1 + grad L2 / n2) / 2, each example weighs the same;
    sum:  g = (grad L1 + grad L2) / 2, each token weighs the same.
    """
    from tulu_kit.data.tokenize import tokenize_sft
    from tulu_kit.models import load_model, load_tokenizer

    rows = [
        {"messages": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}]},
        {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": " ".join("one two three four five six seven eight nine ten".split() * 3)}]},
    ]  # fmt: skip
    train_file = write_jsonl(tmp_path / "two.jsonl", rows)
    tokenized, _ = tokenize_sft(rows, load_tokenizer(tiny_model), 128)
    n = [sum(label != -100 for label in r["labels"][1:]) for r in tokenized]
    assert n[1] > 5 * n[0]
    model = load_model(tiny_model)
    g = [_grad_of(model, r, 1.0) for r in tokenized]

    got = {m: _grads_after_one_step(tiny_model, tmp_path, train_file, m) for m in ("mean", "sum")}
    torch.testing.assert_close(got["mean"], (g[0] / n[0] + g[1] / n[1]) / 2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["sum"], (g[0] + g[1]) / 2, rtol=1e-4, atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(got["mean"], got["sum"], dim=0)
    assert cosine < 0.99  # not just a rescaling: the long answer dominates the direction under sum


# --------------------------------------------------------------------------- training and artifacts


def test_single_process_lowers_loss_and_saves_a_plain_model(tiny_model, tmp_path, mix):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _config(tiny_model, tmp_path, mix, max_steps=16, learning_rate=3e-3, report_to="tensorboard")
    result = run(cfg)
    assert result["train_steps"] == 16 and result["world_size"] == 1
    nll = [h["nll"] for h in read_jsonl(Path(cfg.out_dir) / "log_history.jsonl") if "nll" in h]
    assert sum(nll[-4:]) / 4 < sum(nll[:4]) / 4 - 0.5, nll
    out = Path(cfg.out_dir)
    model = AutoModelForCausalLM.from_pretrained(out / "model")  # plain transformers, no tulu_kit
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert "<|assistant|>" in tokenizer.chat_template
    assert json.loads((out / "model" / "tulu_kit_config.json").read_text())["learning_rate"] == 3e-3
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 16
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    lrs = [
        h["learning_rate"]
        for h in read_jsonl(Path(cfg.out_dir) / "log_history.jsonl")
        if "learning_rate" in h
    ]
    # linear decay from 3e-3 to 0 over 16 steps, no warmup; step s logs the rate it trained with: 3e-3 (1 - (s-1)/16)
    assert lrs == pytest.approx([3e-3 * (1 - (s - 1) / 16) for s in range(1, len(lrs) + 1)], rel=1e-6)
    assert len(lrs) == 16  # logged every step
    trained = torch.cat([p.flatten() for p in model.parameters()])
    base = torch.cat([p.flatten() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters()])
    assert not torch.allclose(trained, base)


def test_packing_trains_on_the_same_tokens(tiny_model, tmp_path, mix):
    cfg = _config(tiny_model, tmp_path, mix, packing=True, max_steps=2, per_device_train_batch_size=2)
    result = run(cfg)
    data = result["data"]
    # the report's efficiency is real tokens / (rows x max_length), by hand from the token count
    assert data["n_kept"] == 64 and data["packing_efficiency"] == round(
        data["n_tokens"] / (data["packed_rows"] * 128), 4
    )
    # measured on the quickstart mix (seed 0) at max_length 128: 4668 tokens in 50 rows (the bound is 37)
    assert (data["n_tokens"], data["packed_rows"]) == (4668, 50)
    # tiny model seed 0, first packed batch: 6.9251, a per-token mean near ln V = 6.93
    assert result["first_nll"] == pytest.approx(6.9251, abs=5e-3)


KILL_SCRIPT = """
import os, signal, sys
from transformers import TrainerCallback
from tulu_kit.sft import SFTConfig, run

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: a crash

cfg = SFTConfig(**{config})
run(cfg, callbacks=[KillAt()])
"""


def test_killed_and_resumed_equals_uninterrupted(tiny_model, tmp_path, mix):
    """Tolerance: 1e-6 absolute on every weight (same data order, optimizer, scheduler and RNG state)."""
    from transformers import AutoModelForCausalLM

    common = dict(max_steps=8, save_steps=3, gradient_accumulation_steps=2)
    straight = run(_config(tiny_model, tmp_path / "straight", mix, **common))

    cfg = _config(tiny_model, tmp_path / "killed", mix, **common)
    script = tmp_path / "killed.py"
    script.write_text(KILL_SCRIPT.format(kill_at=5, config=repr(dataclasses.asdict(cfg))))
    # the killed run uses this process's thread count: another count changes float reduction order
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = Path(cfg.out_dir) / "checkpoints"
    assert (ckpts / "checkpoint-3" / "COMPLETE").is_file() and not (Path(cfg.out_dir) / "model").exists()
    (
        ckpts / "checkpoint-4"
    ).mkdir()  # a checkpoint cut short by the kill: no COMPLETE marker, must be ignored

    resumed = run(dataclasses.replace(cfg, resume=True))
    assert resumed["train_steps"] == straight["train_steps"] == 8
    a = AutoModelForCausalLM.from_pretrained(straight["model_dir"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed["model_dir"]).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- LoRA and QLoRA


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_trains_few_parameters_and_merges_exactly(tiny_model, tmp_path, mix):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = _config(
        tiny_model, tmp_path, mix, use_lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=3
    )
    result = run(cfg)
    assert result["trainable_params"] == LORA_R4_PARAMS
    assert result["total_params"] == TINY_PARAMS + LORA_R4_PARAMS
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    merged = AutoModelForCausalLM.from_pretrained(result["model_dir"])
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result["adapter_dir"]
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.testing.assert_close(_logits(merged, ids), _logits(with_adapter, ids), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_logits(merged, ids), _logits(base, ids))  # the adapter learned something


def test_qlora_trains_a_4bit_base_and_merges_into_the_dequantized_base(tiny_model, tmp_path, mix):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tulu_kit.models import quantization_config_4bit

    cfg = _config(
        tiny_model, tmp_path, mix, use_lora=True, load_in_4bit=True, lora_r=4, lora_dropout=0.0, max_steps=2,
        per_device_train_batch_size=2,
    )  # fmt: skip
    result = run(cfg)
    assert result["trainable_params"] == LORA_R4_PARAMS  # the same adapter on the 4-bit base
    # tiny model seed 0 in 4 bits, first batch of the quickstart mix: 6.9607, near ln V = 6.93 (untrained)
    assert result["first_nll"] == pytest.approx(6.9607, abs=5e-3)
    merged = AutoModelForCausalLM.from_pretrained(result["model_dir"])
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    q = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=quantization_config_4bit("float32")
    )
    trained_on = PeftModel.from_pretrained(
        q, result["adapter_dir"]
    )  # the 4-bit base + adapter, as in training
    unquantized = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result["adapter_dir"]
    )
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    to_trained = (_logits(merged, ids) - _logits(trained_on, ids)).abs().max().item()
    to_unquantized = (_logits(merged, ids) - _logits(unquantized, ids)).abs().max().item()
    # bitsandbytes' CPU 4-bit matmul itself differs from its dequantized weights by ~2.5e-3 on this model
    assert to_trained < 5e-3 and to_unquantized > 10 * to_trained, (to_trained, to_unquantized)


# --------------------------------------------------------------------------- notebooks


def _parameter_names(path: Path) -> set[str]:
    import ast

    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {
        t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets
    }


def test_notebook_03_runs(tiny_model, tmp_path, mix, run_notebook):
    import shutil

    from tulu_kit.data.synthetic import write_toy_benchmarks

    # the mix with the toy world's held-out questions beside it, where notebook 01 writes them
    shutil.copy(mix, tmp_path / "sft.jsonl")
    write_toy_benchmarks(tmp_path / "toy_benchmarks", n=4)
    nb = run_notebook(
        "notebooks/03_lora_qlora.ipynb",
        dict(model=str(tiny_model), train_file=str(tmp_path / "sft.jsonl"), eval_file="", out_dir=str(tmp_path / "lora"), max_steps=2,
             max_length=128, per_device_train_batch_size=2, launcher="none", report_to="none", lora_r=4, logging_steps=1),
    )  # fmt: skip
    adapter = json.loads((tmp_path / "lora" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == set(TULU_LORA_TARGETS.split(","))
    assert json.loads((tmp_path / "lora" / "metrics.json").read_text())["trainable_params"] == LORA_R4_PARAMS
    assert (tmp_path / "lora" / "model" / "config.json").is_file()  # the merged model, saved beside
    # each train cell shows the summary (tulu_kit.training.log_summary), not a line or table row per logged step
    for cell in [c for c in nb.cells if c.cell_type == "code" and "run(" in c.source]:
        html = "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)
        stream = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        shown = [line.rsplit("\r", 1)[-1] for line in stream.split("\n")]  # as a notebook draws \r
        assert "Training Loss" not in html and "'loss'" not in stream
        assert "done: 2 steps in" in stream and len([x for x in shown if x.strip()]) <= 20, shown
    # held-out accuracy of the base, LoRA and full models, and a sentence per benchmark computed from it
    (held,) = [c for c in nb.cells if c.cell_type == "code" and "relative_lines" in c.source]
    printed = "".join(o.get("text", "") for o in held.outputs if o.output_type == "stream")
    scores = {m: json.loads((tmp_path / "lora" / "toy_eval" / m / "gsm8k" / "metrics.json").read_text())["score"]
              for m in ("LoRA", "full")}  # fmt: skip
    assert f"arithmetic: LoRA {scores['LoRA']:.3f} vs full {scores['full']:.3f}" in printed, printed
    assert printed.count("within 10%") == 3 and any("text/html" in o.get("data", {}) for o in held.outputs)


def test_compare_runs_scales_the_trainable_share_to_7b():
    from tulu_kit.models import training_memory_gb
    from tulu_kit.sft import compare_runs

    full = dict(trainable_params=1000, total_params=1000, peak_memory_mb=9.0, last_nll=1.0)  # run results
    lora = dict(trainable_params=10, total_params=1000, peak_memory_mb=5.0, last_nll=1.5)
    table = compare_runs({"full": full, "LoRA": lora}, load_in_4bit=False)
    col = "7B estimate (GB)"
    assert table.loc["full", col] == round(training_memory_gb(7e9, int(7e9), 16)["total"], 1) == 112.0
    assert table.loc["LoRA", col] == round(training_memory_gb(7e9, int(7e9 * 0.01), 16)["total"], 1)
    assert table.loc["QLoRA (estimate only)", col] == round(
        training_memory_gb(7e9, int(7e9 * 0.01), 4)["total"], 1
    )
    assert table.loc["LoRA", "trainable %"] == 1.0
    assert not table.isna().any().any() and table.loc["QLoRA (estimate only)", "final NLL"] == "—"
    q = compare_runs({"full": full, "QLoRA": lora}, load_in_4bit=True)
    assert (
        q.loc["QLoRA", col] == table.loc["QLoRA (estimate only)", col]
        and "QLoRA (estimate only)" not in q.index
    )
