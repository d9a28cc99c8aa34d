"""Strict, typed configuration: one dataclass per stage, loaded from a YAML recipe plus ``key=value`` overrides.

Every notebook turns its ``parameters`` cell into its stage's dataclass with :func:`collect`; ``tulu-kit run``
loads a whole recipe with :func:`load_recipe`. Unknown keys, wrong types and missing required values are
errors that name the key and the file, raised before any work starts.

A recipe is::

    name: quickstart          # the run folder defaults to runs/<name>
    seed: 42                  # given to every stage whose config has a `seed` and does not set one
    jobs: 1                   # stages at a time (those that read none of each other's folders)
    stages:                   # run in this order; each is a notebook executed by papermill
      quickstart: {}          # `kind` defaults to the stage name and selects the STAGES entry
      sft:
        model: ${run_dir}/quickstart/model

String values may use ``${run_dir}``, ``${name}`` and ``${seed}``; every ``${run_dir}/<stage>/...`` a stage reads
must be written by an earlier stage (:func:`check_run_paths`), and ``--set STAGE.model=...`` in a recipe tuned for
the tiny model must come with the values tuned for it (:func:`check_model_overrides`). The notebooks' defaults
``../runs/...`` mean this project's ``runs/`` wherever the process runs (:func:`anchor_runs_path`). Each stage's ``out_dir`` defaults to
``<run_dir>/<stage name>``, so the recipe and stage names must be plain folder names (no ``/``, no ``..``).
YAML is read strictly: a duplicate key is an error (file, line, key), and so is a document that would expand
through aliases to more than ``MAX_YAML_NODES`` values. ``--set key=`` sets the empty string.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
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
_RECIPE_KEYS = ("name", "seed", "seeds", "jobs", "stages")


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
        elif isinstance(f.default, str) and f.default.startswith("../runs"):  # never outside the project
            kwargs[name] = anchor_runs_path(f.default)
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
    values = {k: anchor_runs_path(namespace[k]) for k in names if k in namespace}
    cfg = from_dict(cls, values, source)
    check_inputs_exist(cfg, source)
    return cfg


# --------------------------------------------------------------------------- paths under runs/

RUNS_DIR = REPO_ROOT / "runs"
# config fields a stage reads (the others, out_dir above all, it writes)
INPUT_KEYS = ("model", "train_file", "eval_file", "tokenizer", "reward_model", "value_model", "models",
              "base_model", "run_dir")  # fmt: skip


def anchor_runs_path(value: Any) -> Any:
    """``../runs/...`` (the notebooks' defaults, relative to notebooks/ and eval/) as a path in this project's
    ``runs/``, whatever the working directory: papermill run from the repository root, or ``tulu-kit <stage>``
    from anywhere, reads and writes the same folders as JupyterLab does."""
    if isinstance(value, list):
        return [anchor_runs_path(v) for v in value]
    if isinstance(value, str) and (value == "../runs" or value.startswith("../runs/")):
        return str(RUNS_DIR / value[len("../runs/") :]) if value != "../runs" else str(RUNS_DIR)
    return value


def _writer_hint(path: Path) -> str:
    """Which notebook writes ``runs/<run>/<stage>/...``: "notebook 02_sft writes it; run notebooks 00-02 first"."""
    try:
        parts = path.relative_to(RUNS_DIR).parts
    except ValueError:
        return ""
    if len(parts) < 2:
        return "run notebooks 00-02 first, in order"
    stage = parts[1]
    if stage not in STAGES:
        return ""
    notebook = Path(STAGES[stage][0]).stem
    number = notebook.split("_", 1)[0]
    if number == "00":
        return f"notebook {notebook} writes it: run it first"
    if number.isdigit():
        return f"notebook {notebook} writes it: run notebooks 00-{number} first, in order"
    return f"notebook {STAGES[stage][0]} writes it: run it first"


def check_inputs_exist(cfg: Any, source: str) -> None:
    """A notebook's inputs under this project's ``runs/`` must exist before any work: the message says which
    notebook writes the missing one (notebook 04 run first: "run notebooks 00-02 first")."""
    for key in INPUT_KEYS:
        values = getattr(cfg, key, None)
        for value in values if isinstance(values, list) else [values]:
            inside = isinstance(value, str) and (
                value == str(RUNS_DIR) or value.startswith(str(RUNS_DIR) + os.sep)
            )
            if inside and not Path(value).exists():
                hint = _writer_hint(Path(value))
                raise ConfigError(f"{source}: {key} {value} does not exist" + (f"; {hint}" if hint else ""))


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
    # stages that read none of each other's folders run this many at a time, each in its own kernel
    # (tulu_kit.run); 1 runs them one by one in recipe order (on one GPU, where each would load its model)
    jobs: int = 1

    def resolved(self) -> dict:
        """The recipe as it will run: every default filled in, every ``${...}`` substituted."""
        stages = {
            s.name: {"kind": s.kind, "notebook": _relative(s.notebook), **s.params} for s in self.stages
        }
        return {
            "name": self.name,
            "seed": self.seed,
            "jobs": self.jobs,
            "run_dir": str(self.run_dir),
            "stages": stages,
        }


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
            close = difflib.get_close_matches(stage, list(raw["stages"]), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"stages: {', '.join(raw['stages'])}"
            raise ConfigError(f"override '{item}': {source} has no stage '{stage}' ({hint})")
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


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    run_dir: str | Path | None = None,
    hosts: list[str] | None = None,
    gpus_per_node: int = 1,
) -> Recipe:
    """Load and validate a whole recipe; every stage's config is built (and so checked) before anything runs.

    With ``hosts`` (several nodes, the main one first), every training stage is spread over them:
    :func:`spread_over_nodes`."""
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
    overrides = list(overrides)
    original = raw
    raw = apply_overrides(raw, overrides, source)
    name = _coerce(raw.get("name"), str, "name", source) if "name" in raw else Path(path).stem
    _check_name(name, "recipe name", source)
    seed = _coerce(raw.get("seed", 42), int, "seed", source)
    seeds = raw.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in seeds):
        raise ConfigError(f"{source}: seeds must be a list of integers (e.g. [1, 2, 3]), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds {seeds} repeats a seed")
    jobs = _coerce(raw.get("jobs", 1), int, "jobs", source)
    if jobs < 1:
        raise ConfigError(f"{source}: jobs must be at least 1 (stages at a time), got {jobs}")
    run_dir = Path(run_dir or RUNS_DIR / name).resolve()  # runs/ of this project, wherever the command runs
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
        if hosts and len(hosts) > 1 and "num_machines" in field_names:
            config = spread_over_nodes(config, hosts, gpus_per_node, f"{source}: {where}")
        stages.append(Stage(stage_name, kind, notebook, config))
    check_model_overrides(original, overrides, source)
    check_run_paths(stages, run_dir, source)
    return Recipe(name, seed, run_dir, stages, source, seeds, list(overrides), jobs)


def spread_over_nodes(cfg: Any, hosts: list[str], gpus_per_node: int, where: str) -> Any:
    """A training stage's config on ``len(hosts)`` nodes of ``gpus_per_node`` processes each: the launcher
    starts one process per GPU on every node (the notebook runs on the first, ``hosts[0]``, the rendezvous
    address), and gradient accumulation shrinks so that the effective batch (per-device batch x accumulation x
    processes) stays what the recipe says; when it cannot, the error names what to set."""
    processes = len(hosts) * gpus_per_node
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * cfg.num_processes
    per_pass = cfg.per_device_train_batch_size * processes
    if batch % per_pass:
        raise ConfigError(
            f"{where}: its effective batch {batch} (per_device_train_batch_size {cfg.per_device_train_batch_size} "
            f"x gradient_accumulation_steps {cfg.gradient_accumulation_steps} x num_processes {cfg.num_processes}) "
            f"cannot be kept on {processes} processes ({len(hosts)} nodes x {gpus_per_node}): set "
            "per_device_train_batch_size / gradient_accumulation_steps so it divides"
        )
    try:
        return dataclasses.replace(
            cfg,
            launcher="accelerate" if cfg.launcher == "none" else cfg.launcher,
            num_processes=processes,
            num_machines=len(hosts),
            machine_rank=0,
            main_process_ip=hosts[0],
            gradient_accumulation_steps=batch // per_pass,
        )
    except ValueError as e:
        raise ConfigError(f"{where}: on {len(hosts)} nodes: {e}") from None


# what a stage kind writes in its folder that a later stage may read as ``${run_dir}/<stage>/<name>``; every
# stage also writes metrics.json, and a stage folder itself names its model (evals take a stage or run folder)
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "quickstart": ("model",),
    "data": (
        "sft.jsonl",
        "sft_eval.jsonl",
        "preference.jsonl",
        "preference_eval.jsonl",
        "report.json",
        "toy_benchmarks",
    ),
    "reward": ("reward_model",),
    **{k: ("model", "adapter") for k in ("sft", "lora", "dpo", "ppo", "grpo", "merge")},
}


def _paths(value: Any, where: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, f"{where}.{k}")


def check_run_paths(stages: list[Stage], run_dir: Path, source: str) -> None:
    """Every ``${run_dir}/...`` a stage reads must be written by an earlier stage of the recipe (or exist
    already): a typo (``${run_dir}/sfft/model``, ``${run_dir}/sft/modle``) fails here, not minutes later as a
    Hub "Repo id must be in the form ..." error."""
    writers = {
        Path(s.config.out_dir).resolve(): (i, s) for i, s in enumerate(stages) if hasattr(s.config, "out_dir")
    }
    root = str(run_dir) + os.sep
    for i, stage in enumerate(stages):
        own = str(Path(stage.config.out_dir).resolve()) if hasattr(stage.config, "out_dir") else None
        for key, value in stage.params.items():
            if key == "out_dir":
                continue
            for where, text in _paths(value, f"stages.{stage.name}.{key}"):
                if not text.startswith(root) or (own and (text == own or text.startswith(own + os.sep))):
                    continue
                shown = "${run_dir}/" + text[len(root) :]
                if Path(text).exists():
                    continue
                first, _, rest = text[len(root) :].partition(os.sep)
                found = writers.get((run_dir / first).resolve())
                if found is None:
                    names = [s.name for s in stages]
                    close = difflib.get_close_matches(first, names, n=1)
                    hint = f"did you mean '{close[0]}'?" if close else f"stages: {', '.join(names)}"
                    raise ConfigError(
                        f"{source}: {where}: {shown}: no stage writes ${{run_dir}}/{first} ({hint})"
                    )
                j, writer = found
                if j >= i:
                    raise ConfigError(f"{source}: {where}: {shown} is written by stage '{writer.name}', which runs "
                                      f"after '{stage.name}': put '{writer.name}' first")  # fmt: skip
                name = rest.split(os.sep, 1)[0]
                outputs = STAGE_OUTPUTS.get(writer.kind)
                if name and outputs and name not in (*outputs, "metrics.json"):
                    close = difflib.get_close_matches(name, outputs, n=1)
                    hint = f"did you mean '{close[0]}'?" if close else f"it writes {', '.join(outputs)}"
                    raise ConfigError(f"{source}: {where}: {shown}: stage '{writer.name}' ({writer.kind}) does not "
                                      f"write '{name}' ({hint})")  # fmt: skip


def _as_path(text: str, base: Path) -> str | None:
    """Where a stage's kernel would take ``text`` to be: ``../runs/...`` anchored in this project's ``runs/``,
    ``~`` expanded, anything else relative to the kernel's folder (its notebook's)."""
    try:
        path = Path(anchor_runs_path(text)).expanduser()
        return str((path if path.is_absolute() else base / path).resolve())
    except (ValueError, OSError):  # not a path at all (a NUL byte, a name too long)
        return None


def stage_dependencies(stages: list[Stage], run_dir: Path) -> list[set[int]]:
    """The earlier stages each stage waits for: those whose folder one of its parameters names
    (``${run_dir}/sft/model``, or a relative or ``~`` path to it); where one names the run folder itself (the
    report; an eval of ``${run_dir}``, which takes the last model written), every earlier stage, and that stage
    is one of every later stage's too. Stages run in this order when a recipe runs ``jobs`` at a time, and a
    stage that runs again re-runs the stages that read it (:mod:`tulu_kit.run`)."""
    folders = []
    for s in stages:
        folder = _as_path(str(s.config.out_dir), s.notebook.parent) if hasattr(s.config, "out_dir") else None
        folders.append(folder)
    deps: list[set[int]] = [set() for _ in stages]
    for i, stage in enumerate(stages):
        for key, value in stage.params.items():
            if key == "out_dir":
                continue
            for _, text in _paths(value, key):
                path = _as_path(text, stage.notebook.parent) if text else None
                if path is None:
                    continue
                if path == str(run_dir):
                    deps[i].update(range(i))
                    for later in deps[i + 1 :]:
                        later.add(i)
                deps[i].update(
                    j for j, folder in enumerate(folders[:i])
                    if folder and (path == folder or path.startswith(folder + os.sep))
                )  # fmt: skip
    return deps


_TIED_KEYS = ("learning_rate",)  # chosen for one model: a recipe's value is wrong for another


def check_model_overrides(raw: dict, overrides: list[str], source: str) -> None:
    """``--set STAGE.model=X`` in a recipe written for the tiny model the run builds (a ``quickstart`` stage)
    must not half-apply: the values the recipe chose for that model (learning rates, the data stage's
    tokenizer) of the stage and of every stage trained from it must be set too, or the run stops here."""
    stages = {k: dict(v or {}) for k, v in (raw.get("stages") or {}).items()}
    kinds = {k: v.get("kind", k) for k, v in stages.items()}
    given = {item.partition("=")[0] for item in overrides}
    for item in overrides:
        key, _, text = item.partition("=")
        stage, _, field_name = key.partition(".")
        if field_name != "model" or stage not in stages:
            continue
        old = stages[stage].get("model")
        origin = re.match(r"\$\{run_dir\}/([^/]+)/", str(old or ""))
        if not origin or kinds.get(origin.group(1)) != "quickstart" or parse_value(text) == old:
            continue
        # the stage and every stage that reads its folder, transitively, were tuned for the tiny model
        tuned, frontier = {stage}, [stage]
        while frontier:
            s = frontier.pop()
            for t, params in stages.items():
                if t not in tuned and any("${run_dir}/" + s + "/" in v for _, v in _paths(params, t)):
                    tuned.add(t)
                    frontier.append(t)
        stale = [f"{t}.{k}" for t in stages for k in _TIED_KEYS if t in tuned and k in stages[t]]
        stale += [f"{t}.{k}" for t, params in stages.items() for k in ("model", "tokenizer")
                  if t != stage and params.get(k) == old]  # fmt: skip
        stale = [k for k in stale if k not in given]
        if stale:
            sets = " ".join(f"--set {k}={_suggestion(k, kinds, text)}" for k in stale)
            raise ConfigError(
                f"{source}: --set {key}={text} changes the model that {source} tuned for {old} (the tiny model): "
                f"also give {sets} (learning rates: each stage's published default), or start from a recipe for "
                "a real model (recipes/one_gpu/)"
            )


def _suggestion(key: str, kinds: dict[str, str], model: str) -> str:
    """What to set ``stage.field`` to for a real model: the new model for a model or tokenizer, else the stage's
    dataclass default (the published value, e.g. SFT's 2e-5, DPO's 5e-7)."""
    stage, _, name = key.partition(".")
    if name in ("model", "tokenizer"):
        return model
    try:
        fields = {f.name: f for f in dataclasses.fields(config_class(kinds[stage]))}
        return repr(fields[name].default) if name in fields else "..."
    except ConfigError:
        return "..."
