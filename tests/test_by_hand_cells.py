"""Each training and merge notebook's "By hand" cell computes its idea and meets the library's value.

The cell is taken from the notebook itself and run on tiny artifacts laid out as the stage leaves them
(`<out_dir>/model`, `<out_dir>/adapter`, `<out_dir>/reward_model`), with the `cfg` the notebook builds.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from tulu_kit.data.synthetic import synthetic_preference, synthetic_sft
from tulu_kit.io import write_jsonl

REPO = Path(__file__).resolve().parents[1]


def by_hand_cell(notebook: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("# By hand:")]
    assert len(cells) == 1, f"{notebook}: one 'By hand' cell"
    index = nb.cells.index(cells[0])
    assert nb.cells[index - 1].cell_type == "markdown", f"{notebook}: a markdown cell before it"
    return cells[0].source


def run_cell(notebook: str, cfg) -> dict:
    namespace = {"cfg": cfg}
    exec(compile(by_hand_cell(notebook), notebook, "exec"), namespace)
    return namespace


@pytest.fixture
def data(tmp_path):
    write_jsonl(tmp_path / "sft.jsonl", synthetic_sft(8, seed=0))
    write_jsonl(tmp_path / "preference.jsonl", synthetic_preference(8, seed=0))
    return tmp_path


def test_sft_masked_nll(tiny_model, data, tmp_path):
    from tulu_kit.sft import SFTConfig

    shutil.copytree(tiny_model, tmp_path / "sft" / "model")
    cfg = SFTConfig(model=str(tiny_model), train_file=str(data / "sft.jsonl"), out_dir=str(tmp_path / "sft"),
                    max_length=64)  # fmt: skip
    ns = run_cell("02_sft.ipynb", cfg)
    assert ns["by_hand"] == pytest.approx(ns["library"], rel=1e-5)
    assert 0 < int(ns["in_A"].sum()) < int(ns["attention_mask"].sum())  # the prompt is masked out


def test_lora_merge(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tulu_kit.sft import LoRAConfig

    out = tmp_path / "lora"
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(out / "adapter")
    peft_model.merge_and_unload().save_pretrained(out / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out / "model")
    ns = run_cell("03_lora_qlora.ipynb", LoRAConfig(model=str(tiny_model), out_dir=str(out)))
    assert ns["scale"] == 2.0 and torch.linalg.matrix_rank(ns["B"] @ ns["A"]) <= 4
    assert (ns["merged"] - ns["W0"]).abs().max() > 1e-3  # the adapter did change the weight ...
    assert (ns["by_hand"] - ns["merged"]).abs().max() < 1e-6  # ... by exactly (alpha / r) B A


def test_dpo_loss(tiny_model, data, tmp_path):
    from tulu_kit.dpo import DPOConfig
    from tulu_kit.models import build_tiny_model

    build_tiny_model(
        tmp_path / "dpo" / "model", seed=1
    )  # the "trained" policy: other weights, same tokenizer
    for loss_type in ("dpo", "dpo_norm"):
        cfg = DPOConfig(model=str(tiny_model), train_file=str(data / "preference.jsonl"),
                        out_dir=str(tmp_path / "dpo"), max_length=128, loss_type=loss_type, beta=0.5)  # fmt: skip
        ns = run_cell("04_dpo.ipynb", cfg)
        assert ns["by_hand"] == pytest.approx(ns["library"], rel=1e-5)
        assert ns["by_hand"] != pytest.approx(math.log(2), abs=1e-3)  # policy != reference: a real margin


def test_reward_bradley_terry(tiny_model, data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tulu_kit.reward import RewardConfig

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.save_pretrained(tmp_path / "reward" / "reward_model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "reward" / "reward_model")
    cfg = RewardConfig(model=str(tiny_model), train_file=str(data / "preference.jsonl"),
                       out_dir=str(tmp_path / "reward"), max_length=128)  # fmt: skip
    ns = run_cell("05_reward_model.ipynb", cfg)
    assert len(ns["seqs"][0]) != len(ns["seqs"][1]) and not ns["mask"].all()  # one reply is padded
    for side in ("chosen", "rejected"):
        assert ns["r"][side] == pytest.approx(ns["r_library"][side], abs=1e-5)
    assert ns["by_hand"] == pytest.approx(ns["library"], rel=1e-5)
    assert ns["by_hand"] == pytest.approx(math.log1p(math.exp(-ns["margin"])), rel=1e-6)


def test_ties_small_vector():
    from tulu_kit.merge import MergeConfig

    ns = run_cell("06_merging.ipynb", MergeConfig())
    # worked out on paper, density 0.5, weights 0.5, 1, 0.8: entry 0 is the weighted mean of the two positive
    # entries kept, (0.25 + 0.4) / 1.5 (unweighted: 0.45); entries 3 and 5 elect a negative sign
    expected = torch.tensor([0.65 / 1.5, 0.6, 0.0, -1.2, 0.0, -0.9])
    assert torch.allclose(ns["by_hand"], expected, atol=1e-6)
    assert torch.allclose(ns["library"], expected, atol=1e-6)
