"""Recipes cannot half-apply: model overrides, ${run_dir} paths, written stage configs, real-model recipes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tulu_kit.config import REPO_ROOT, RUNS_DIR, ConfigError, collect, from_dict, load_recipe
from tulu_kit.training import load_config

QUICKSTART = REPO_ROOT / "recipes" / "quickstart.yaml"
ONE_GPU = sorted((REPO_ROOT / "recipes" / "one_gpu").glob("*.yaml"))


def test_a_real_model_in_the_tiny_recipe_stops_naming_what_else_to_change(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(QUICKSTART, ["sft.model=Qwen/Qwen2.5-0.5B-Instruct"], run_dir=tmp_path)
    message = str(e.value)
    assert "\n" not in message
    for key in (
        "sft.learning_rate=2e-05",
        "dpo.learning_rate=5e-07",
        "data.tokenizer=Qwen/Qwen2.5-0.5B-Instruct",
    ):
        assert f"--set {key}" in message  # the published defaults, ready to paste
    # given what it names, the override carries through
    sets = ["sft.model=Qwen/Qwen2.5-0.5B-Instruct"] + message.split("also give ")[1].split(" (")[0].split(
        "--set "
    )
    recipe = load_recipe(QUICKSTART, [s.strip() for s in sets if s.strip()], run_dir=tmp_path)
    stages = {s.name: s.config for s in recipe.stages}
    assert stages["sft"].learning_rate == 2e-5 and stages["sft"].model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert stages["dpo"].learning_rate == 5e-7 and stages["data"].tokenizer == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("${run_dir}/sfft/model", "no stage writes ${run_dir}/sfft (did you mean 'sft'?)"),
        ("${run_dir}/sft/modle", "stage 'sft' (sft) does not write 'modle' (did you mean 'model'?)"),
        ("${run_dir}/ppo/model", "is written by stage 'ppo', which runs after 'dpo'"),
    ],
)
def test_run_dir_paths_are_checked_against_the_stages_that_write_them(tmp_path, value, expected):
    with pytest.raises(ConfigError, match="stages.dpo.model") as e:
        load_recipe(QUICKSTART, [f"dpo.model={value}"], run_dir=tmp_path)
    assert expected in str(e.value)
    (tmp_path / "elsewhere").mkdir()  # a folder that exists already (made by hand) is fine
    load_recipe(QUICKSTART, ["dpo.model=${run_dir}/elsewhere"], run_dir=tmp_path)


@pytest.mark.parametrize("recipe", ONE_GPU, ids=lambda p: p.name)
def test_one_gpu_recipes_validate_offline_and_write_usable_stage_configs(recipe, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = tmp_path / "cfg"
    result = subprocess.run(
        [sys.executable, "-m", "tulu_kit.cli", "run", str(recipe), "--out", str(tmp_path / "run"),
         "--write-configs", str(out)],  # fmt: skip
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = load_recipe(recipe, run_dir=tmp_path / "run")
    for stage in loaded.stages:
        path = out / f"{stage.name}.yaml"
        assert path.is_file()
        if stage.kind in ("sft", "dpo", "grpo"):  # what `tulu-kit <kind> FILE` and train.sbatch read
            cfg = load_config(type(stage.config), path)
            assert cfg == stage.config
    sft = next(s for s in loaded.stages if s.kind == "sft").config
    per_step = sft.per_device_train_batch_size * sft.gradient_accumulation_steps * sft.num_processes
    assert per_step == 128 and sft.bf16 and sft.gradient_checkpointing  # open-instruct's effective batch
    for grpo in (s.config for s in loaded.stages if s.kind == "grpo"):
        assert grpo.prompts_per_step == 48 and grpo.num_generations == 16


def test_notebook_defaults_live_in_the_project_and_missing_inputs_name_the_notebook(tmp_path, monkeypatch):
    from tulu_kit.dpo import DPOConfig

    monkeypatch.chdir(tmp_path)  # papermill run from anywhere, tulu-kit <stage> from anywhere
    cfg = from_dict(DPOConfig, {"out_dir": str(tmp_path / "o")})
    assert cfg.model == str(RUNS_DIR / "lab" / "sft" / "model")
    namespace = {"model": "../runs/nothere/sft/model", "out_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError) as e:
        collect(DPOConfig, namespace)
    assert f"model {RUNS_DIR}/nothere/sft/model does not exist" in str(e.value)
    assert "notebook 02_sft writes it: run notebooks 00-02 first" in str(e.value)


def test_no_notebook_default_resolves_outside_the_project():
    import ast

    import papermill as pm

    from tulu_kit.config import STAGES, anchor_runs_path

    for notebook, _ in sorted(set(STAGES.values())):
        for name, param in pm.inspect_notebook(str(REPO_ROOT / notebook)).items():
            value = anchor_runs_path(ast.literal_eval(param["default"]))
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and text.startswith(".."):
                    raise AssertionError(
                        f"{notebook}: {name} = {text!r} leaves the project (only ../runs/...)"
                    )
