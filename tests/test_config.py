"""Strict configs: unknown keys, wrong types and missing values name the key and the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulu_kit.config import ConfigError, collect, from_dict, load_recipe, load_yaml, parse_value, to_dict


@dataclass
class Inner:
    rank: int = 8
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Cfg:
    model: str
    lr: float = 1e-5
    epochs: int = 1
    bf16: bool = False
    schedule: Literal["linear", "cosine"] = "linear"
    max_steps: int | None = None
    lora: Inner = field(default_factory=Inner)


def test_from_dict_builds_nested_and_coerces_int_to_float():
    cfg = from_dict(Cfg, {"model": "m", "lr": 1, "lora": {"rank": 4}}, "r.yaml")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.lora == Inner(rank=4, targets=["q_proj"])
    assert to_dict(cfg)["lora"] == {"rank": 4, "targets": ["q_proj"]}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": "m", "lrr": 1.0}, "r.yaml: unknown key 'lrr' (did you mean 'lr'?)"),
        ({"model": "m", "lora": {"rnak": 2}}, "r.yaml: unknown key 'lora.rnak' (did you mean 'lora.rank'?)"),
        ({"lr": 1.0}, "r.yaml: missing required key 'model'"),
        ({"model": "m", "epochs": 1.5}, "r.yaml: epochs: expected an integer, got 1.5"),
        ({"model": "m", "epochs": True}, "r.yaml: epochs: expected an integer"),
        ({"model": "m", "bf16": "yes"}, "r.yaml: bf16: expected true or false"),
        ({"model": "m", "lr": "fast"}, "r.yaml: lr: expected a number"),
        ({"model": "m", "schedule": "cosin"}, "r.yaml: schedule: must be one of 'linear', 'cosine'"),
        ({"model": 3}, "r.yaml: model: expected a string"),
        ({"model": "m", "lora": {"targets": "q"}}, "r.yaml: lora.targets: expected a list"),
        ({"model": "m", "max_steps": "x"}, "r.yaml: max_steps: expected"),
    ],
)
def test_from_dict_errors_name_key_and_file(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Cfg, data, "r.yaml")
    assert message in str(e.value)


def test_optional_accepts_none_and_value():
    assert from_dict(Cfg, {"model": "m", "max_steps": None}).max_steps is None
    assert from_dict(Cfg, {"model": "m", "max_steps": 7}).max_steps == 7


def test_parse_value_reads_scientific_floats_and_yaml():
    assert parse_value("5e-6") == 5e-6 and isinstance(parse_value("5e-6"), float)
    assert parse_value("true") is True and parse_value("3") == 3 and parse_value("[a, b]") == ["a", "b"]
    assert parse_value("runs/x") == "runs/x"


def test_collect_takes_only_fields_from_namespace():
    cfg = collect(Cfg, {"model": "m", "lr": 0.5, "pd": object(), "__name__": "x"})
    assert cfg == Cfg(model="m", lr=0.5)


RECIPE = """\
name: t
seed: 7
stages:
  quickstart:
    hidden_size: 32
    prompt: "hi ${name} ${seed}"
  second:
    kind: quickstart
    learning_rate: 5e-6
"""


def test_load_recipe_substitutes_injects_and_validates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("    learning_rate: 5e-6\n", "    num_layers: 1\n"))
    recipe = load_recipe(path, ["quickstart.num_heads=2", "seed=3"], run_dir=tmp_path / "run")
    first, second = recipe.stages
    assert (first.name, first.kind, second.kind) == ("quickstart", "quickstart", "quickstart")
    assert first.config.prompt == "hi t 3" and first.config.seed == 3 and first.config.num_heads == 2
    assert first.config.out_dir == str(tmp_path / "run" / "quickstart")
    assert second.config.num_layers == 1 and second.config.out_dir == str(tmp_path / "run" / "second")
    assert recipe.resolved()["stages"]["second"]["notebook"] == "notebooks/00_quickstart.ipynb"


def test_misspelt_stage_key_names_stage_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: unknown key 'stages.second.learning_rate'")


@pytest.mark.parametrize(
    "override, message",
    [
        ("quickstart.hiden_size=3", "unknown key 'stages.quickstart.hiden_size' (did you mean"),
        ("nope.x=1", "has no stage 'nope'"),
        ("sed=1", "unknown recipe key 'sed'"),
        ("quickstart.hidden_size=big", "stages.quickstart.hidden_size: expected an integer, got 'big'"),
        ("quickstart.hidden_size", "expected key=value"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("    learning_rate: 5e-6\n", ""))
    with pytest.raises(ConfigError) as e:
        load_recipe(path, [override])
    assert message in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: t\nstagse: {}\n", "unknown recipe key 'stagse' (did you mean 'stages'?)"),
        ("name: t\nstages: {a: {kind: quickstrat}}\n", "unknown stage kind 'quickstrat' (did you mean"),
        ("name: t\nstages: {a: {prompt: '${nope}'}}\n", "unknown variable ${nope}"),
        ("name: t\nstages: {quickstart: {hidden_size: 30, num_heads: 4}}\n", "not divisible by num_heads"),
        ("name: [t\n", "invalid YAML"),
    ],
)
def test_bad_recipes(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert message in str(e.value) and str(path) in str(e.value)


# --------------------------------------------------------------------------- hostile and careless input


@pytest.mark.parametrize(
    "text, where",
    [
        ("name: t\nseed: 1\nseed: 2\nstages: {quickstart: {}}\n", "line 3: duplicate key 'seed' (first set on line 2)"),
        ("name: t\nstages:\n  quickstart:\n    seed: 1\n    prompt: a\n    seed: 2\n",
         "line 6: duplicate key 'seed' (first set on line 4)"),
        ("name: t\nstages:\n  quickstart: {}\n  quickstart: {seed: 3}\n",
         "line 4: duplicate key 'quickstart' (first set on line 3)"),
    ],
)  # fmt: skip
def test_duplicate_keys_name_file_line_and_key(tmp_path, text, where):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: {where}"


def test_merge_keys_still_override_without_being_duplicates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\nstages:\n  quickstart: &base {seed: 1, prompt: a}\n  b: {<<: *base, kind: quickstart, seed: 5}\n"
    )
    first, second = load_recipe(path, run_dir=tmp_path / "run").stages
    assert (first.config.seed, second.config.seed, second.config.prompt) == (1, 5, "a")


def _alias_bomb(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: t\nstages: {{quickstart: {{prompt: *l{levels - 1}}}}}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (_alias_bomb(), "values once aliases (*name) are expanded"),  # 10**9 strings if expanded
        ("name: t\nloop: &a [*a]\n", "values once aliases (*name) are expanded"),  # an infinite document
        ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("name: ._\n", "invalid YAML value"),  # resolved as a float, which float() refuses
    ],
    ids=["alias-bomb", "self-alias", "deep-nesting", "bad-float"],
)
def test_hostile_yaml_is_refused_with_the_file(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_an_alias_bomb_in_an_override_is_refused():
    bomb = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 9) + "]"
    assert len(parse_value(bomb)) == 10  # 100 values: fine
    with pytest.raises(ConfigError, match="alias"):
        parse_value(_alias_bomb().split("\nname")[0].replace("\n", ", ").join("{}"))


@pytest.mark.parametrize(
    "text, overrides, bad",
    [
        ("name: ../escape\nstages: {quickstart: {}}\n", [], "recipe name '../escape'"),
        ("name: /tmp/abs\nstages: {quickstart: {}}\n", [], "recipe name '/tmp/abs'"),
        ("name: t\nstages: {quickstart: {}}\n", ["name=../../x"], "recipe name '../../x'"),
        ("name: ..\nstages: {quickstart: {}}\n", [], "recipe name '..'"),
        ("name: t\nstages: {../up: {kind: quickstart}}\n", [], "stage name '../up'"),
        ("name: t\nstages: {a/b: {kind: quickstart}}\n", [], "stage name 'a/b'"),
        ("name: t\nstages: {/abs: {kind: quickstart}}\n", [], "stage name '/abs'"),
        ("name: t\nstages: {.hidden: {kind: quickstart}}\n", [], "stage name '.hidden'"),
        ("name: t\nstages: {7: {kind: quickstart}}\n", [], "stage name 7"),
    ],
)
def test_names_that_would_write_outside_runs_are_refused(tmp_path, monkeypatch, text, overrides, bad):
    from tulu_kit.cli import main

    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "r.yaml").write_text(text)
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match="must be a plain folder name") as e:
        load_recipe(tmp_path / "r.yaml", overrides)
    assert bad in str(e.value)
    args = ["run", str(tmp_path / "r.yaml"), *[a for o in overrides for a in ("--set", o)]]
    assert main(args) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "work"] and not any(work.iterdir())


def test_empty_override_is_the_empty_string(tmp_path):
    assert parse_value("") == "" and parse_value("null") is None and parse_value("''") == ""
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nstages: {quickstart: {prompt: hello}}\n")
    assert load_recipe(path, ["quickstart.prompt="]).stages[0].config.prompt == ""


YAML_ALPHABET = "ab01.-_:[]{},&*!|>'\"#?<=\n \t${}e"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=YAML_ALPHABET, max_size=80))
def test_any_text_loads_or_fails_as_a_config_error(tmp_path, text):
    """Fuzz: whatever bytes a recipe holds, load_yaml returns data or raises ConfigError naming the file."""
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_yaml(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}: ")
    try:
        load_recipe(path)
    except ConfigError:
        pass
