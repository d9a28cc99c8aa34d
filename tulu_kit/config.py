"""Strict, typed configuration: one dataclass per stage, loaded from a YAML recipe plus ``key=value`` overrides.

Every notebook turns its ``parameters`` cell into its stage's dataclass with :func:`collect`; ``tulu-kit run``
loads a whole recipe with :func:`load_recipe`. Unknown keys, wrong types and missing required values are
errors that name the key and the file, raised before any work starts.

A recipe is::

    name: quickstart          # the run folder defaults to runs/<name>
    seed: 42                  # given to every stage whose config has a `seed` and does not set one
    stages:                   # run in this order; each is a notebook executed by papermill
      quickstart: {}          # `kind` defaults to the stage name and selects the STAGES entry
      sft:
        model: ${run_dir}/quickstart/model

String values may use ``${run_dir}``, ``${name}`` and ``${seed}``. Each stage's ``out_dir`` defaults to
``<run_dir>/<stage name>``, so the recipe and stage names must be plain folder names (no ``/``, no ``..``).
YAML is read strictly: a duplicate key is an error (file, line, key), and so is a document that would expand
through aliases to more than ``MAX_YAML_NODES`` values. ``--set key=`` sets the empty string.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

# kind -> (notebook path relative to the repo root, "module:ConfigClass")
STAGES: dict[str, tuple[str, str]] = {
    "quickstart": ("notebooks/00_quickstart.ipynb", "tulu_kit.quickstart:QuickstartConfig"),
    "data": ("notebooks/01_data_mixing.ipynb", "tulu_kit.data.stage:DataConfig"),
    "sft": ("notebooks/02_sft.ipynb", "tulu_kit.sft:SFTConfig"),
    "lora": ("notebooks/03_lora_qlora.ipynb", "tulu_kit.sft:LoRAConfig"),
    "dpo": ("notebooks/04_dpo.ipynb", "tulu_kit.dpo:DPOConfig"),
    "reward": ("notebooks/05_reward_model.ipynb", "tulu_kit.reward:RewardConfig"),
    "merge": ("notebooks/06_merging.ipynb", "tulu_kit.merge:MergeConfig"),
    "ppo": ("notebooks/08_ppo.ipynb", "tulu_kit.ppo:PPOConfig"),
    "report": ("notebooks/07_report.ipynb", "tulu_kit.report:ReportConfig"),
    "grpo": ("notebooks/09_grpo.ipynb", "tulu_kit.grpo:GRPOConfig"),
}
# every benchmark is a stage `eval_<name>`: the notebook eval/<name>.ipynb and the module tulu_kit.evals.<name>,
# whose CONFIG is its config class (derived from the notebooks, so a benchmark is listed in one place)
STAGES.update(
    {f"eval_{nb.stem}": (f"eval/{nb.name}", f"tulu_kit.evals.{nb.stem}:CONFIG")
     for nb in sorted((REPO_ROOT / "eval").glob("*.ipynb"))}
)  # fmt: skip

RESERVED_STAGE_KEYS = ("kind", "notebook")
_RECIPE_KEYS = ("name", "seed", "seeds", "stages")


class ConfigError(ValueError):
    """A recipe or parameter problem, with the file and the key in the message."""


# --------------------------------------------------------------------------- YAML


MAX_YAML_NODES = 100_000  # nodes after expanding aliases; a recipe has hundreds, an alias bomb billions


class _Refused(yaml.YAMLError):
    """Valid YAML that a config must not be: the message names the line."""


class _DuplicateKey(_Refused):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: duplicate key '{key}' (first set on line {first})")


class _TooLarge(_Refused):
    def __init__(self, line: int):
        super().__init__(
            f"line {line}: more than {MAX_YAML_NODES} values once aliases (*name) are expanded; "
            "a recipe needs far fewer (an alias bomb?)"
        )


def _children(node: yaml.Node) -> list[yaml.Node] | None:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return None


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document with every alias expanded, counted without expanding (memoised per node); an alias
    inside its own anchor (an infinite document) counts as too large."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()  # the nodes whose subtree is being counted: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key, children = id(node), _children(node)
        if children_done:
            visiting.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
        elif key in visiting:
            return MAX_YAML_NODES + 1  # a node inside itself
        elif key not in sizes:
            if children is None:
                sizes[key] = 1
                continue
            visiting.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-6`` as a float (YAML 1.2), not the string PyYAML's 1.1 rules give, refuses
    duplicate keys and refuses documents that expand (through aliases) to more than MAX_YAML_NODES values."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node) > MAX_YAML_NODES:
            raise _TooLarge(node.start_mark.line + 1)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges; keys set beside it override the merged ones, as YAML says
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    pass
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise _Refused("nested too deeply (thousands of levels of [ or {)") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning syntax errors, duplicate keys and alias bombs into a ConfigError that names the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return _yaml(path.read_text())
    except _Refused as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    except (
        ValueError,
        TypeError,
        OverflowError,
    ) as e:  # a scalar PyYAML resolves but cannot build, e.g. `._`
        raise ConfigError(f"{path}: invalid YAML value: {e}") from None


def parse_value(text: str) -> Any:
    """Parse an override's value the way YAML would (``1e-4`` -> float, ``true`` -> bool, ``[a, b]`` -> list).

    Nothing after the ``=`` (``--set sft.eval_file=``) is the empty string, not YAML's null: ``key=null`` says
    None.
    """
    if not text.strip():
        return ""
    try:
        return _yaml(text)
    except _Refused as e:
        raise ConfigError(f"override value {text[:40]!r}: {e}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return text


# --------------------------------------------------------------------------- dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, source)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {where}: must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return from_dict(tp, value, source, prefix=f"{where}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{source}: {where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: Any, source: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, strictly: every key known, every type right, every required set."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict:
    """A config as plain data (nested dataclasses become dicts), ready for YAML or papermill."""
    return dataclasses.asdict(obj)


def collect(cls: type, namespace: Mapping[str, Any], source: str = "notebook parameters") -> Any:
    """Build a stage config from a notebook's ``globals()``: the parameters cell names exactly its fields.

    A parameter that papermill injected (``papermill -p learnin_rate 0.01``) but the config does not have is
    an error with a "did you mean", as in ``tulu-kit run``: otherwise it would just be an unused variable and
    the notebook would run with the default.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    injected = injected_parameters(namespace)
    unknown = [k for k in injected if k not in names]
    if unknown:
        return from_dict(cls, {k: None for k in unknown}, f"{source} (papermill -p / parameters=)")
    return from_dict(cls, {k: namespace[k] for k in names if k in namespace}, source)


def injected_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """Names papermill assigned in its ``# Parameters`` cell, read from IPython's input history (``In``).

    Outside IPython (no ``In``) or when papermill injected nothing, the list is empty.
    """
    import ast

    history = namespace.get("In")
    if not isinstance(history, list):
        return []
    names: list[str] = []
    for cell in history:
        if not isinstance(cell, str) or cell.lstrip().split("\n", 1)[0].strip() != "# Parameters":
            continue
        try:
            tree = ast.parse(cell)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("PAPERMILL_")]


def config_class(kind: str, source: str = "<recipe>") -> type:
    """The config dataclass registered for a stage kind."""
    if kind not in STAGES:
        close = difflib.get_close_matches(kind, list(STAGES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known kinds: {', '.join(sorted(STAGES))}"
        raise ConfigError(f"{source}: unknown stage kind '{kind}'{hint}")
    module, _, name = STAGES[kind][1].partition(":")
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- recipes


@dataclass
class Stage:
    """One resolved stage of a recipe: which notebook runs, with which validated config."""

    name: str
    kind: str
    notebook: Path
    config: Any

    @property
    def params(self) -> dict:
        return to_dict(self.config)


@dataclass
class Recipe:
    name: str
    seed: int
    run_dir: Path
    stages: list[Stage]
    source: str
    seeds: list[int] = dataclasses.field(default_factory=list)  # run once per seed into <run_dir>/seed-<k>
    # the key=value overrides it was loaded with
    overrides: list[str] = dataclasses.field(default_factory=list)

    def resolved(self) -> dict:
        """The recipe as it will run: every default filled in, every ``${...}`` substituted."""
        stages = {
            s.name: {"kind": s.kind, "notebook": _relative(s.notebook), **s.params} for s in self.stages
        }
        return {"name": self.name, "seed": self.seed, "run_dir": str(self.run_dir), "stages": stages}


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def apply_overrides(raw: dict, overrides: Iterable[str], source: str) -> dict:
    """Apply ``key=value`` overrides: ``seed=1`` sets a recipe key, ``sft.learning_rate=1e-4`` a stage key."""
    raw = {**raw, "stages": {k: dict(v or {}) for k, v in (raw.get("stages") or {}).items()}}
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        value = parse_value(text)
        stage, dot, sub = key.partition(".")
        if not dot:
            if key not in _RECIPE_KEYS or key == "stages":
                raise ConfigError(f"override '{item}': unknown recipe key '{key}' (stage keys are stage.key)")
            raw[key] = value
        elif stage not in raw["stages"]:
            raise ConfigError(f"override '{item}': {source} has no stage '{stage}'")
        else:
            target = raw["stages"][stage]
            *parents, leaf = sub.split(".")
            for p in parents:
                target = target.setdefault(p, {})
            target[leaf] = value
    return raw


_VAR = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _check_name(name: Any, what: str, source: str) -> str:
    """A recipe or stage name becomes a folder name under runs/: one plain path component, nothing else."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{source}: {what} {name!r} must be a plain folder name (letters, digits, _ . + -; no '/', no '..', "
            "not starting with '.' or '-'), since runs/<name>/<stage> is written"
        )
    return name


def _substitute(value: Any, variables: dict[str, str], where: str, source: str) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ConfigError(
                    f"{source}: {where}: unknown variable ${{{m.group(1)}}} (known: {', '.join(variables)})"
                )
            return variables[m.group(1)]

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}.{k}", source) for k, v in value.items()}
    return value


def load_recipe(path: str | Path, overrides: Iterable[str] = (), run_dir: str | Path | None = None) -> Recipe:
    """Load and validate a whole recipe; every stage's config is built (and so checked) before anything runs."""
    source = str(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with keys {', '.join(_RECIPE_KEYS)}")
    for key in raw:
        if key not in _RECIPE_KEYS:
            close = difflib.get_close_matches(str(key), _RECIPE_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown recipe key '{key}'{hint}")
    if not isinstance(raw.get("stages"), dict) or not raw["stages"]:
        raise ConfigError(f"{source}: 'stages' must be a non-empty mapping of stage name -> parameters")
    raw = apply_overrides(raw, overrides, source)
    name = _coerce(raw.get("name"), str, "name", source) if "name" in raw else Path(path).stem
    _check_name(name, "recipe name", source)
    seed = _coerce(raw.get("seed", 42), int, "seed", source)
    seeds = raw.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in seeds):
        raise ConfigError(f"{source}: seeds must be a list of integers (e.g. [1, 2, 3]), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds {seeds} repeats a seed")
    run_dir = Path(run_dir or Path("runs") / name).resolve()
    variables = {"run_dir": str(run_dir), "name": name, "seed": str(seed)}
    stages = []
    for stage_name, params in raw["stages"].items():
        _check_name(stage_name, "stage name", source)
        where = f"stages.{stage_name}"
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping of parameters, got {params!r}")
        params = _substitute(dict(params), variables, where, source)
        kind = params.pop("kind", stage_name)
        cls = config_class(kind, f"{source}: {where}")
        notebook = REPO_ROOT / params.pop("notebook", STAGES[kind][0])
        if not notebook.is_file():
            raise ConfigError(f"{source}: {where}: notebook {notebook} does not exist")
        field_names = {f.name for f in dataclasses.fields(cls)}
        params.setdefault("out_dir", str(run_dir / stage_name))
        if "seed" in field_names:
            params.setdefault("seed", seed)
        config = from_dict(cls, params, source, prefix=f"{where}.")
        stages.append(Stage(stage_name, kind, notebook, config))
    return Recipe(name, seed, run_dir, stages, source, seeds, list(overrides))
