"""DPO stage: bad pairs, the reference cache, TRL vs own loss path, held-out accuracy, LoRA/QLoRA, the notebook."""

import gzip
import json
from pathlib import Path

import pytest
import torch

from tulu_kit import dpo, trainers
from tulu_kit.config import ConfigError, from_dict
from tulu_kit.data.pairs import load_pairs
from tulu_kit.data.synthetic import synthetic_preference
from tulu_kit.data.validate import BadRowError
from tulu_kit.io import write_jsonl


def _pair(user="What is 2 plus 2?", chosen="The answer is 4.", rejected="The answer is 5.", user_r=None):
    return {
        "chosen": [{"role": "user", "content": user}, {"role": "assistant", "content": chosen}],
        "rejected": [{"role": "user", "content": user_r or user}, {"role": "assistant", "content": rejected}],
    }


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pref") / "preference.jsonl"
    write_jsonl(path, synthetic_preference(60, seed=3))
    return path


def _cfg(tiny_model, pairs_file, out_dir, **kw) -> dpo.DPOConfig:
    base = dict(model=str(tiny_model), train_file=str(pairs_file), out_dir=str(out_dir), eval_fraction=0.2,
                loss_type="dpo_norm", beta=5.0, learning_rate=1e-3, num_train_epochs=2, per_device_train_batch_size=8,
                max_length=96, warmup_ratio=0.0, launcher="none")  # fmt: skip
    return dpo.DPOConfig(**{**base, **kw})


# --------------------------------------------------------------------------- bad pairs and config


@pytest.mark.parametrize(
    ("row", "field", "problem", "kind"),
    [
        (_pair(rejected="The answer is 4."), "rejected", "identical", "identical"),
        (_pair(user_r="What is 3 plus 3?"), "rejected", "same prompt", "different_prompts"),
        (_pair(chosen="  "), "chosen[1].content", "empty", "empty_response"),
    ],
)
def test_bad_pair_raises_with_file_row_field_or_is_dropped_and_counted(tmp_path, row, field, problem, kind):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [_pair(), row, _pair()])
    with pytest.raises(BadRowError) as err:
        load_pairs(str(path), bad_pairs="error")
    assert (err.value.source, err.value.row, err.value.field) == (str(path), 2, field)
    assert problem in str(err.value) and str(path) in str(err.value)
    pairs, dropped = load_pairs(str(path), bad_pairs="drop")
    assert len(pairs) == 2 and dropped == {kind: 1}


def test_all_pairs_bad_is_an_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [_pair(rejected="The answer is 4.")])
    with pytest.raises(ValueError, match="no usable preference pairs"):
        load_pairs(str(path), bad_pairs="drop")


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'betaa'"):
        from_dict(dpo.DPOConfig, {"betaa": 0.1}, "dpo.yaml")
    with pytest.raises(ConfigError, match="loss_type: must be one of"):
        from_dict(dpo.DPOConfig, {"loss_type": "kto"}, "dpo.yaml")
    with pytest.raises(ConfigError, match="needs use_lora|set use_lora"):
        from_dict(dpo.DPOConfig, {"load_in_4bit": True}, "dpo.yaml")
    with pytest.raises(ConfigError, match="label_smoothing"):
        from_dict(dpo.DPOConfig, {"loss_type": "ipo", "label_smoothing": 0.1}, "dpo.yaml")
    own = {lt: dpo.DPOConfig(loss_type=lt).own_loss for lt in ("dpo", "dpo_norm", "ipo", "simpo", "wpo")}
    assert own == {"dpo": False, "dpo_norm": False, "ipo": False, "simpo": True, "wpo": True}
    assert dpo.DPOConfig(loss_type="dpo", label_smoothing=0.1).own_loss


def test_real_hh_rlhf_pairs_load_and_tokenize(shared_data, tiny_model):
    from tulu_kit.data.formats import convert_hh_rlhf
    from tulu_kit.data.tokenize import tokenize_preference
    from tulu_kit.models import load_tokenizer

    with gzip.open(shared_data / "hh_rlhf" / "helpful-base" / "test.jsonl.gz", "rt") as f:
        rows = [convert_hh_rlhf(json.loads(line), index=i) for i, line in zip(range(40), f)]
    pairs = [r for r in rows if r["chosen"][-1]["content"] != r["rejected"][-1]["content"]]
    tokenized, stats = tokenize_preference(pairs, load_tokenizer(tiny_model), 256)
    assert stats.n_input == len(pairs) and tokenized
    assert all(r["chosen_ids"] != r["rejected_ids"] for r in tokenized)


# --------------------------------------------------------------------------- reference cache and loss paths


def _sequence_logp(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    per_token = logp.gather(-1, targets[:, None])[:, 0]
    return per_token[len(prompt_ids) - 1 :].sum().item()


def test_reference_cache_holds_per_example_logps_and_is_reused(tiny_model, pairs_file, tmp_path, monkeypatch):
    from tulu_kit.models import load_model

    cfg = _cfg(tiny_model, pairs_file, tmp_path / "a", loss_type="dpo", beta=0.1, max_steps=1)
    trainer, _ = dpo.build_trainer(cfg)
    files = list((tmp_path / "a" / "ref_cache").glob("ref_logps_*.pt"))
    assert len(files) == 2  # train and held-out pairs
    row = trainer.train_dataset[3]
    model = load_model(tiny_model)
    assert row["ref_chosen_logps"] == pytest.approx(
        _sequence_logp(model, row["prompt_ids"], row["chosen_ids"]), 1e-4
    )
    assert row["ref_rejected_logps"] == pytest.approx(
        _sequence_logp(model, row["prompt_ids"], row["rejected_ids"]), 1e-4
    )
    # a second build with the same data and model reads the cache instead of running the reference pass
    monkeypatch.setattr(
        trainers.dpo_trainer_class(), "_reference_pass", lambda *a: pytest.fail("cache not reused")
    )
    again, _ = dpo.build_trainer(cfg)
    assert again.train_dataset["ref_chosen_logps"] == trainer.train_dataset["ref_chosen_logps"]


def test_cached_reference_trains_exactly_like_a_reference_model(tiny_model, pairs_file, tmp_path):
    kw = dict(loss_type="dpo", beta=0.1, max_steps=2)
    cached = dpo.run(_cfg(tiny_model, pairs_file, tmp_path / "cached", **kw))
    in_memory = dpo.run(_cfg(tiny_model, pairs_file, tmp_path / "model", reference="model", **kw))
    assert cached["eval_after"]["rewards/margins"] != 0
    for key, value in cached["eval_after"].items():
        assert in_memory["eval_after"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(("loss_type", "beta"), [("dpo", 0.1), ("dpo_norm", 5.0), ("ipo", 0.1)])
def test_own_loss_path_equals_trl_loss_on_a_real_batch(
    tiny_model, pairs_file, tmp_path, monkeypatch, loss_type, beta
):
    """On a policy that differs from the reference (perturbed weights): at initialisation every DPO-family loss
    is log 2 (IPO: 1/(4β²)), whatever the lengths or β, so equality there would prove nothing."""
    trainer, _ = dpo.build_trainer(_cfg(tiny_model, pairs_file, tmp_path, loss_type=loss_type, beta=beta))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch).item()
        monkeypatch.setattr(dpo.DPOConfig, "own_loss", property(lambda self: True))
        ours = trainer.compute_loss(trainer.model, batch).item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    at_init = {"ipo": (1 / (2 * beta)) ** 2}.get(loss_type, 0.6931472)
    assert abs(ours - at_init) > 1e-3  # the policy really differs from the reference


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss_type", ["simpo", "wpo"])
def test_own_losses_train_in_the_trainer(tiny_model, pairs_file, tmp_path, loss_type):
    beta = {"simpo": 2.0, "wpo": 0.1}[loss_type]
    result = dpo.run(_cfg(tiny_model, pairs_file, tmp_path, loss_type=loss_type, beta=beta, max_steps=4))
    assert result["eval_after"]["rewards/margins"] > result["eval_before"]["rewards/margins"]
    if (
        loss_type == "simpo"
    ):  # WPO's loss is weighted by e^(ℓc + ℓr), ~1e-6 on the untrained model: float noise
        assert result["eval_after"]["loss"] < result["eval_before"]["loss"]


def test_lora_dpo_merges_adapter_and_reference_is_the_base(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "lora"
    cfg = _cfg(tiny_model, pairs_file, out, loss_type="dpo", beta=0.1, use_lora=True, lora_r=8, lora_alpha=16,
               learning_rate=1e-2, max_steps=3)  # fmt: skip
    result = dpo.run(cfg)
    assert result["eval_before"]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # B = 0: policy = base
    assert result["eval_after"]["rewards/margins"] > 0
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)  # the adapter saved is the one configured
    from tulu_kit.models import load_model

    merged, base = load_model(out / "model"), load_model(tiny_model)
    assert not torch.equal(
        merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )
    assert torch.equal(merged.lm_head.weight, base.lm_head.weight)  # never adapted


def test_qlora_dpo_saves_a_plain_model(tiny_model, pairs_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    cfg = _cfg(tiny_model, pairs_file, out, loss_type="dpo", beta=0.1, use_lora=True, lora_r=8, load_in_4bit=True,
               learning_rate=1e-2, max_steps=1, eval_fraction=0.1)  # fmt: skip
    result = dpo.run(cfg)
    assert result["train_steps"] == 1
    config = json.loads((out / "model" / "config.json").read_text())
    assert "quantization_config" not in config


def test_model_fingerprint_changes_when_the_weights_are_rewritten(tiny_model, tmp_path):
    import shutil

    copy = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    before = trainers.model_fingerprint(str(copy))
    assert trainers.model_fingerprint(str(copy)) == before
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b"\0")
    assert trainers.model_fingerprint(str(copy)) != before
    assert trainers.model_fingerprint("org/other-model") != trainers.model_fingerprint("org/model")


@pytest.mark.distributed
def test_zero3_two_processes_evaluate_before_training_and_key_the_cache_by_model(tmp_path, pairs_file):
    """recipes/tulu*/dpo_*.yaml: ZeRO-3, cached reference, held-out pairs. An evaluate() before train() broke the
    DeepSpeed engine, and the weight hash of ZeRO-3's empty shards let a second model reuse the first's cache."""
    from tulu_kit.models import build_tiny_model

    results = []
    for seed in (0, 1):
        model = build_tiny_model(tmp_path / f"tiny{seed}", seed=seed)
        cfg = _cfg(model, pairs_file, tmp_path / f"dpo{seed}", ref_cache_dir=str(tmp_path / "cache"),
                   loss_type="dpo", beta=0.1, max_steps=1, per_device_train_batch_size=4, launcher="accelerate",
                   num_processes=2, main_process_port=29657,
                   deepspeed=str(Path(__file__).parents[1] / "recipes/deepspeed/zero3.json"))  # fmt: skip
        results.append(dpo.run(cfg))
    assert len(list((tmp_path / "cache").glob("ref_logps_*.pt"))) == 4  # train + held-out, per model
    for result in results:  # before training the policy is the reference: every implicit reward is 0
        assert result["eval_before"]["rewards/chosen"] == pytest.approx(0, abs=1e-5)
        assert result["eval_before"]["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert results[0]["eval_before"]["logps/chosen"] != results[1]["eval_before"]["logps/chosen"]
