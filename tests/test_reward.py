"""Reward model: reward read at the last non-pad token, Bradley–Terry training lifts held-out accuracy, notebook."""

import json
import math

import pytest
import torch

from tulu_kit import models, reward
from tulu_kit.data.synthetic import synthetic_preference
from tulu_kit.io import write_jsonl


@pytest.fixture(scope="module")
def rm_model(tiny_model):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=1).eval()


def test_reward_is_read_at_the_last_non_pad_token(rm_model):
    seqs = [[1, 40, 41, 42, 2], [1, 50, 51]]
    ids, mask = models.pad_batch(seqs, pad_id=0)
    with torch.no_grad():
        got = reward.get_reward(rm_model, ids, mask)
        for i, s in enumerate(seqs):  # one unpadded row at a time: the head on the last token's hidden state
            hidden = rm_model.model(input_ids=torch.tensor([s])).last_hidden_state
            assert got[i].item() == pytest.approx(rm_model.score(hidden)[0, -1, 0].item(), rel=1e-4, abs=1e-5)
        # more right padding changes nothing, and HF's own pad-id pooling agrees when pad != eos
        wide_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
        wide_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
        assert torch.allclose(reward.get_reward(rm_model, wide_ids, wide_mask), got, atol=1e-5)
        assert torch.allclose(rm_model(input_ids=ids, attention_mask=mask).logits[:, 0], got, atol=1e-5)
        # padding with the eos id (tokenizers without a pad token): the mask still finds the true last token
        eos_ids, eos_mask = models.pad_batch(seqs, pad_id=2)
        assert torch.allclose(reward.get_reward(rm_model, eos_ids, eos_mask), got, atol=1e-5)


def test_score_pairs_accuracy_and_loss(rm_model):
    rows = [
        {"chosen_ids": [1, 40, 41], "rejected_ids": [1, 50, 51, 52]},
        {"chosen_ids": [1, 60], "rejected_ids": [1, 61]},
    ]
    out = reward.score_pairs(rm_model, rows, pad_id=0)
    with torch.no_grad():
        r = [reward.get_reward(rm_model, *models.pad_batch([row[k]], 0)).item() for row in rows for k in ("chosen_ids",
             "rejected_ids")]  # fmt: skip
    assert out["accuracy"] == pytest.approx(((r[0] > r[1]) + (r[2] > r[3])) / 2)
    assert out["margin"] == pytest.approx(((r[0] - r[1]) + (r[2] - r[3])) / 2, rel=1e-4)


def test_reward_model_learns_heldout_preferences(tiny_model, tmp_path):
    data = tmp_path / "preference.jsonl"
    write_jsonl(data, synthetic_preference(80, seed=3))
    out = tmp_path / "rm"
    cfg = reward.RewardConfig(model=str(tiny_model), train_file=str(data), out_dir=str(out), eval_fraction=0.25,
                              learning_rate=1e-3, num_train_epochs=3.0, per_device_train_batch_size=8,
                              max_length=96)  # fmt: skip
    reward.run(cfg)
    result = json.loads((out / "metrics.json").read_text())
    assert result["n_eval"] == 20
    assert result["eval_after"]["accuracy"] > 0.6  # chance is 0.5
    # tiny model seed 0, synthetic_preference(80, seed=3), 3 epochs: 11/20 held-out pairs right before, 13/20 after
    assert (result["eval_before"]["accuracy"], result["eval_after"]["accuracy"]) == pytest.approx(
        (0.55, 0.65)
    )
    assert result["eval_before"]["loss"] == pytest.approx(
        math.log(2), abs=0.02
    )  # untrained: margins ~ 0, -log σ(0)
    assert result["eval_after"]["accuracy"] > result["eval_before"]["accuracy"]
    # margin 0.00 -> 0.20 (measured): the toy world's multiple-choice pairs differ by one letter, hard to score
    assert result["eval_after"]["margin"] > result["eval_before"]["margin"] + 0.1
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "reward_model"))
    assert not (out / "model").exists()  # a run folder's model/ is the policy, never the scorer
    assert model.config.num_labels == 1 and (out / "reward_model" / "tokenizer.json").is_file()


def test_config_is_strict():
    from tulu_kit.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="unknown key 'lr'"):
        from_dict(reward.RewardConfig, {"lr": 1e-5}, "rm.yaml")
    with pytest.raises(ConfigError, match="eval_fraction"):
        from_dict(reward.RewardConfig, {"eval_fraction": 1.5}, "rm.yaml")


@pytest.mark.distributed
def test_zero3_two_processes_score_heldout_pairs(tiny_model, tmp_path):
    """Under ZeRO-3 (recipes/tulu3/rm_8b.yaml) the weights are empty shards outside the engine: scoring the
    held-out pairs before and after training must gather them, not crash in the embedding lookup."""
    from pathlib import Path

    data = write_jsonl(tmp_path / "preference.jsonl", synthetic_preference(32, seed=3))
    cfg = reward.RewardConfig(
        model=str(tiny_model), train_file=str(data), out_dir=str(tmp_path / "rm"), eval_fraction=0.25,
        max_steps=2, per_device_train_batch_size=4, max_length=96, launcher="accelerate", num_processes=2,
        main_process_port=29671,
        deepspeed=str(Path(__file__).parents[1] / "recipes/deepspeed/zero3.json"),
    )  # fmt: skip
    result = reward.run(cfg)
    assert result["train_steps"] == 2 and result["n_eval"] == 8
    for when in ("eval_before", "eval_after"):
        assert set(result[when]) >= {"accuracy", "margin", "loss"} and result[when]["loss"] > 0


def test_cli_trains_the_stage_from_a_flat_config(tiny_model, tmp_path, capsys):
    """`tulu-kit reward CONFIG --set key=value`: the per-node command every training stage shares."""
    import yaml

    from tulu_kit.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_preference(12, seed=1))
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model), "train_file": str(data), "out_dir": str(tmp_path / "rm"),
                                   "max_length": 64, "per_device_train_batch_size": 4}))  # fmt: skip
    assert main(["reward", str(cfg), "--set", "max_steps=2", "--set", "eval_fraction=0.25"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "rm" / "reward_model")
    result = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    assert result["stage"] == "reward" and result["train_steps"] == 2 and result["n_eval"] == 2
    assert main(["reward", str(cfg), "--set", "learning_rate=-1"]) == 2  # checked before any work
    assert "learning_rate must be > 0" in capsys.readouterr().err
