"""Every recipe loads into its stages' configs, and every notebook's parameters cell matches its config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import papermill as pm
import pytest

from tulu_kit.config import REPO_ROOT, STAGES, config_class, load_recipe

RECIPES = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "recipes").rglob("*.yaml"))
NOTEBOOKS = sorted({nb for nb, _ in STAGES.values()})


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loads_and_opens_with_a_header(recipe, tmp_path):
    text = (REPO_ROOT / recipe).read_text()
    assert text.startswith("#"), (
        f"{recipe}: a recipe opens with a comment: purpose, hardware, source, command"
    )
    loaded = load_recipe(REPO_ROOT / recipe, run_dir=tmp_path)
    assert loaded.stages


@pytest.mark.parametrize("kind", sorted(STAGES))
def test_parameters_cell_names_exactly_the_config_fields(kind):
    notebook, _ = STAGES[kind]
    params = pm.inspect_notebook(str(REPO_ROOT / notebook))
    cls = config_class(kind)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # Names must match; defaults may not: a notebook's are lab values for the tiny model (a learning rate of
    # 1e-3), a dataclass's are the published ones a library user on a real model should get (5e-7 for DPO).
    assert set(params) == set(fields), f"{notebook}: parameters cell vs {cls.__name__} fields"
    for param in params.values():  # every default parses (papermill drops a line it cannot read)
        compile(param["default"], notebook, "eval")


@pytest.mark.parametrize("stage", ["quickstart", "ppo", "grpo"])
def test_the_base_and_rl_notebooks_train_as_the_quickstart_does(stage):
    """Notebooks 00, 08 and 09 at their defaults train as the quickstart recipe's stage (whose results `make sanity`
    measures): every value the recipe sets, but for paths into the run folder and the logging interval."""
    import ast

    import yaml

    recipe = yaml.safe_load((REPO_ROOT / "recipes/quickstart.yaml").read_text())["stages"][stage]
    notebook = STAGES[stage][0]
    params = {
        k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(REPO_ROOT / notebook)).items()
    }
    differ = {
        key: (params[key], value)
        for key, value in recipe.items()
        if key != "logging_steps" and "${run_dir}" not in str(value) and params[key] != value
    }
    assert not differ, f"{notebook} default vs recipes/quickstart.yaml {stage}: {differ}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_is_stripped_and_tagged(notebook):
    import nbformat

    nb = nbformat.read(Path(REPO_ROOT / notebook), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{notebook}: exactly one cell tagged 'parameters'"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{notebook}: outputs not stripped"
            assert "\ndef " not in "\n" + cell.source, f"{notebook}: logic belongs in tulu_kit, not a def"
