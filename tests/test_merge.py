"""Merging: LoRA/QLoRA adapter merge, weight diff round trips, each merge method against its formula."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from tulu_kit.config import ConfigError, from_dict
from tulu_kit.merge import MergeConfig, check_compatible, merge_models, run
from tulu_kit.models import merge_lora
from tulu_kit.results import read_result
from tulu_kit.weight_diff import DIFF_META, FIXUPS_NAME, make_diff, recover, weight_map

NORM = "model.norm.weight"  # its first 4 entries hold hand-made values in every test model
NUM_FIXUPS = 22  # measured: make_diff(family base, tuned), float32 diff (hand-made entries and roundings)
HAND = {"base": [0.0, 0.0, 0.0, 0.0], "a": [1.0, -2.0, 3.0, 0.0], "b": [3.0, 1.0, -1.0, 2.0]}


def state_file(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(file, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def state(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name, file in weight_map(path).items():
        with safe_open(file, framework="pt") as f:
            out[name] = f.get_tensor(name)
    return out


@pytest.fixture(scope="module")
def family(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """base and two 'fine-tunes' a, b of it (base + noise), each saved in several ~100 KB shards."""
    root = tmp_path_factory.mktemp("family")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    paths = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        model = copy.deepcopy(base)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen) * bool(seed))
            model.model.norm.weight[:4] = torch.tensor(HAND[name])
        model.save_pretrained(root / name, max_shard_size="100KB")
        tok.save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture(scope="module")
def sd(family) -> dict[str, dict[str, torch.Tensor]]:
    return {k: state(p) for k, p in family.items()}


# --------------------------------------------------------------------------- model merging vs formulas


def test_linear_is_the_normalised_weighted_average(family, sd, tmp_path):
    out = merge_models([family["a"], family["b"]], tmp_path / "m", weights=[1, 3], max_shard_size="100KB")
    merged = state(out)
    for k, v in merged.items():
        torch.testing.assert_close(v, (sd["a"][k] + 3 * sd["b"][k]) / 4, rtol=0, atol=1e-6)
    assert merged[NORM][:4].tolist() == [2.5, 0.25, 0.0, 1.5]  # (1·a + 3·b) / 4 by hand
    shards = sorted(
        p.name for p in out.glob("model-*.safetensors")
    )  # written shard by shard, like its inputs
    assert len(shards) > 3 and shards == sorted(p.name for p in family["a"].glob("model-*.safetensors"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(family["a"]).chat_template
    AutoModelForCausalLM.from_pretrained(out)  # a loadable HF checkpoint


def test_task_arithmetic_adds_scaled_task_vectors(family, sd, tmp_path):
    out = merge_models(
        [family["a"], family["b"]], tmp_path / "m", "task_arithmetic", base_model=family["base"], scale=0.5
    )
    base, a, b = sd["base"], sd["a"], sd["b"]
    for k, v in state(out).items():
        torch.testing.assert_close(
            v, base[k] + 0.5 * ((a[k] - base[k]) + (b[k] - base[k])), rtol=0, atol=1e-6
        )
    assert state(out)[NORM][:4].tolist() == [2.0, -0.5, 1.0, 1.0]


def ties_reference(base, thetas, density, lam):
    """Yadav et al. 2023, Alg. 1, per tensor: trim to top-k |τ|, elect sign of Σ τ̂, disjoint mean, scale."""
    taus = []
    for theta in thetas:
        tau = (theta - base).flatten()
        keep = torch.zeros_like(tau)
        keep[tau.abs().argsort(descending=True)[: max(1, int(density * tau.numel()))]] = 1
        taus.append(tau * keep)
    taus = torch.stack(taus)
    gamma = torch.where(taus.sum(0) >= 0, 1.0, -1.0)
    agree = taus.sign() == gamma
    mean = (taus * agree).sum(0) / agree.sum(0).clamp(min=1)
    return base + lam * mean.reshape(base.shape)


def test_ties_elects_signs_and_takes_the_disjoint_mean(family, sd, tmp_path):
    kw = dict(method="ties", base_model=family["base"])
    out = merge_models([family["a"], family["b"]], tmp_path / "d1", density=1.0, **kw)
    # sums [4, -1, 2, 2] elect [+, -, +, +]; agreeing entries averaged; a's 0 has no sign and does not count
    assert state(out)[NORM][:4].tolist() == [2.0, -2.0, 3.0, 2.0]
    out = merge_models([family["a"], family["b"]], tmp_path / "d5", density=0.5, scale=0.8, **kw)
    for k, v in state(out).items():
        ref = ties_reference(sd["base"][k], [sd["a"][k], sd["b"][k]], 0.5, 0.8)
        torch.testing.assert_close(v, ref, rtol=0, atol=1e-6)


def test_slerp_follows_the_great_circle(family, sd, tmp_path):
    t = 0.3
    out = merge_models([family["a"], family["b"]], tmp_path / "m", "slerp", weights=[1 - t, t])
    for k, v in state(out).items():
        v0, v1 = sd["a"][k].double().flatten(), sd["b"][k].double().flatten()
        cos = torch.dot(v0 / v0.norm(), v1 / v1.norm()).clamp(-1, 1)
        if cos.abs() > 0.9995:
            ref = (1 - t) * v0 + t * v1
        else:
            omega = torch.arccos(cos)
            ref = (torch.sin((1 - t) * omega) * v0 + torch.sin(t * omega) * v1) / torch.sin(omega)
        torch.testing.assert_close(v, ref.reshape(v.shape).float(), rtol=0, atol=1e-5)


def test_dare_drops_and_rescales_by_one_over_density(family, sd, tmp_path):
    kw = dict(method="dare_linear", base_model=family["base"], density=0.5, seed=3)
    out = merge_models([family["a"]], tmp_path / "m1", **kw)
    again = merge_models([family["a"]], tmp_path / "m2", **kw)
    k = "model.embed_tokens.weight"
    delta, tau = state(out)[k] - sd["base"][k], sd["a"][k] - sd["base"][k]
    dropped = delta == 0
    torch.testing.assert_close(delta[~dropped], tau[~dropped] / 0.5, rtol=0, atol=1e-6)
    assert 0.45 < dropped.float().mean() < 0.55
    assert torch.equal(state(again)[k], state(out)[k])  # the seed fixes the drops


def test_mismatches_fail_before_any_work(family, tiny_model, tmp_path):
    from tulu_kit.models import build_tiny_model

    wider = build_tiny_model(tmp_path / "wider", hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match="shape"):
        merge_models([family["a"], wider], tmp_path / "out")
    other_tok = tmp_path / "other_tok"
    shutil.copytree(family["b"], other_tok)
    tok = AutoTokenizer.from_pretrained(other_tok)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other_tok)
    with pytest.raises(ValueError, match="tokenizers differ"):
        merge_models([family["a"], other_tok], tmp_path / "out")
    other_arch = tmp_path / "other_arch"
    shutil.copytree(family["b"], other_arch)
    cfg = json.loads((other_arch / "config.json").read_text())
    cfg |= {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}
    (other_arch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type"):
        check_compatible([family["a"], other_arch])
    assert not (tmp_path / "out").exists()


def test_config_is_strict():
    with pytest.raises(ConfigError, match="slerp interpolates exactly 2"):
        from_dict(MergeConfig, {"models": ["a", "b", "c"], "method": "slerp"}, "r.yaml")
    with pytest.raises(ConfigError, match="base_model"):
        from_dict(MergeConfig, {"models": ["a", "b"], "method": "ties"}, "r.yaml")
    with pytest.raises(ConfigError, match="weights"):
        from_dict(MergeConfig, {"models": ["a", "b"], "weights": [1.0]}, "r.yaml")


# --------------------------------------------------------------------------- adapters


def _lora(model, path: Path):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)  # random A and B, so the adapter changes the logits
    peft_model.save_pretrained(path)
    return peft_model.eval()


def test_lora_merge_equals_base_plus_adapter(tiny_model, tmp_path):
    torch.manual_seed(0)
    peft_model = _lora(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    out = merge_lora(tiny_model, tmp_path / "adapter", tmp_path / "merged", pad_to_multiple_of=8)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 1000, (2, 12))
    with torch.no_grad():
        want, got = peft_model(ids).logits, merged(ids).logits
    base_vocab = want.shape[-1]
    assert base_vocab == 1027 and merged.get_input_embeddings().weight.shape[0] == 1032  # next multiple of 8
    torch.testing.assert_close(got[..., :base_vocab], want, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in state(out))
    assert (
        AutoTokenizer.from_pretrained(out).chat_template
        == AutoTokenizer.from_pretrained(tiny_model).chat_template
    )


def test_qlora_merge_dequantizes_the_nf4_base(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    torch.manual_seed(0)
    q_base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, dtype=torch.float32)
    _lora(q_base, tmp_path / "adapter")
    q_base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, dtype=torch.float32)
    # train mode (no dropout here) is the path QLoRA trains through: dequantize NF4, then matmul. In eval mode
    # bitsandbytes' CPU kernel repacks the weights for an AVX512-bf16 GEMM, which differs by ~2e-3.
    reference = PeftModel.from_pretrained(q_base, tmp_path / "adapter").train()
    ids = torch.randint(3, 1000, (2, 12))
    with torch.no_grad():
        want = reference(ids).logits
        errors = {}
        for qlora in (True, False):
            out = merge_lora(tiny_model, tmp_path / "adapter", tmp_path / f"merged_{qlora}", qlora=qlora)
            errors[qlora] = (AutoModelForCausalLM.from_pretrained(out)(ids).logits - want).abs().max().item()
            assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert errors[True] < 1e-4  # merged into the dequantized NF4 weights: the trained function
    assert errors[False] > 10 * errors[True]  # merged into the original weights: off by the NF4 rounding


# --------------------------------------------------------------------------- weight diffs


@pytest.fixture
def tuned(family, tmp_path) -> Path:
    """b with a grown vocabulary (Alpaca adds <pad>) and weights that subtraction cannot round-trip."""
    model = AutoModelForCausalLM.from_pretrained(family["b"])
    tok = AutoTokenizer.from_pretrained(family["b"])
    tok.add_tokens(["<|new|>"])
    with torch.random.fork_rng():  # the new embedding row is sampled: seeded, so the fixups can be counted
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tok))
    with torch.no_grad():  # 1e-10 - w rounds to -w; sign flips; a negative zero
        model.model.layers[0].mlp.up_proj.weight[0, :4] = torch.tensor([1e-10, -3.0, -0.0, 7e-30])
    model.save_pretrained(tmp_path / "tuned", max_shard_size="100KB")
    tok.save_pretrained(tmp_path / "tuned")
    return tmp_path / "tuned"


def test_weight_diff_round_trips_bit_exactly(family, tuned, tmp_path):
    raw = family["base"]
    report = make_diff(raw, tuned, tmp_path / "diff", max_shard_size="100KB")
    fixups = state_file(tmp_path / "diff" / FIXUPS_NAME)
    up = "model.layers.0.mlp.up_proj.weight"
    # the hand-made entries 1e-10, -0.0 and 7e-30 cannot come back from raw + (tuned - raw) in float32
    assert {0, 2, 3} <= set(fixups[f"{up}::index"].tolist())
    assert report.num_fixups == sum(len(v) for k, v in fixups.items() if k.endswith("::index"))
    assert report.num_fixups == NUM_FIXUPS
    diff, raw_sd, tuned_sd = state(tmp_path / "diff"), state(raw), state(tuned)
    k = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(diff[k], tuned_sd[k] - raw_sd[k], rtol=0, atol=0)  # diff = tuned − raw
    out = recover(raw, tmp_path / "diff", tmp_path / "recovered", max_shard_size="100KB")
    got = state(out)
    assert got.keys() == tuned_sd.keys()
    for name, t in tuned_sd.items():
        assert torch.equal(got[name].view(torch.int32), t.view(torch.int32)), name  # bit for bit
    assert (
        AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(tuned).chat_template
    )
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert not (out / DIFF_META).exists() and len(shards) > 3
    assert shards == sorted(p.name for p in tuned.glob("model-*.safetensors"))  # the tuned model's sharding


def test_recover_refuses_the_wrong_raw_model(family, tuned, tmp_path):
    make_diff(family["base"], tuned, tmp_path / "diff")
    with pytest.raises(ValueError, match="checksum"):
        recover(family["a"], tmp_path / "diff", tmp_path / "recovered")
    assert not (tmp_path / "recovered").exists()


def test_recover_reads_alpaca_style_diffs_without_checksum(family, tuned, tmp_path, caplog):
    make_diff(family["base"], tuned, tmp_path / "diff")
    (tmp_path / "diff" / DIFF_META).unlink()
    (tmp_path / "diff" / FIXUPS_NAME).unlink()
    with caplog.at_level(logging.WARNING):
        out = recover(family["base"], tmp_path / "diff", tmp_path / "recovered")
    assert "without a checksum" in caplog.text
    for name, t in state(tuned).items():
        torch.testing.assert_close(state(out)[name], t, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the stage


def write_pairs(path: Path) -> Path:
    rows = [
        {
            "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
            "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}],
        }
        for q, good, bad in [
            ("What is 2+2?", "4", "5"),
            ("Name a colour.", "Blue.", "Seven."),
            ("Capital of France?", "Paris.", "I do not know"),
        ]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_sweeps_the_path_and_scores_each_point(family, tmp_path):
    from tulu_kit.merge import preference_metrics

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cfg = MergeConfig(
        out_dir=str(tmp_path / "merge"), models=[str(family["a"]), str(family["b"])], path=[0.0, 0.5, 1.0],
        eval_file=str(pairs),
    )  # fmt: skip
    result = run(cfg)
    assert [r["t"] for r in result["path"]] == [0.0, 0.5, 1.0]
    assert result["path"][0]["chosen_logp_per_token"] == pytest.approx(
        preference_metrics(family["a"], pairs)["chosen_logp_per_token"], abs=1e-5
    )  # t = 0 is model a itself
    assert result["held_out"]["chosen_logp_per_token"] == pytest.approx(
        result["path"][1]["chosen_logp_per_token"]
    )
    assert len({round(r["chosen_logp_per_token"], 6) for r in result["path"]}) == 3
    saved = [
        json.loads(line) for line in (tmp_path / "merge" / "path_metrics.jsonl").read_text().splitlines()
    ]
    assert saved == result["path"] and not (tmp_path / "merge" / "path").exists()
    assert [r["weights"] for r in saved] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    assert read_result(tmp_path / "merge")["path"] == saved
    # the report's Δ merge reads its start here
    assert read_result(tmp_path / "merge")["models"] == cfg.models


def test_preference_file_errors_name_the_line(family, tmp_path):
    from tulu_kit.merge import preference_metrics

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "just text", "rejected": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1: field 'chosen'"):
        preference_metrics(family["a"], bad)


def test_cli_merges_models_and_round_trips_a_diff(family, tmp_path, capsys):
    from tulu_kit.cli import main

    a, b, base = (str(family[k]) for k in ("a", "b", "base"))
    assert (
        main(
            ["merge", "models", a, b, "--method", "ties", "--base-model", base, "--out", str(tmp_path / "t")]
        )
        == 0
    )
    assert state(tmp_path / "t")[NORM][:4].tolist() == [2.0, -2.0, 3.0, 2.0]
    assert main(["merge", "diff", "--raw", base, "--tuned", a, "--out", str(tmp_path / "d")]) == 0
    assert (
        main(["merge", "recover", "--raw", base, "--diff", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
        == 0
    )
    assert all(torch.equal(v, state(family["a"])[k]) for k, v in state(tmp_path / "r").items())
    assert (
        main(["merge", "recover", "--raw", a, "--diff", str(tmp_path / "d"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "checksum" in capsys.readouterr().err
