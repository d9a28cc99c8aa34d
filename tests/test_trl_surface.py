"""TRL's private surface: every private name the kit relies on still exists in the pinned TRL.

Upgrading TRL is: change the pin in pyproject.toml, run this file, fix ``tulu_kit/trainers.py`` (the one module
that touches TRL's private methods and attributes). A failure names the attribute that moved.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from tulu_kit.trainers import PRIVATE_SURFACE, PUBLIC_SURFACE


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def _defines(owner, attr: str) -> bool:
    """Whether ``owner`` has ``attr`` as a class/module attribute or sets ``self.attr`` in its (or a base's) code."""
    if hasattr(owner, attr):
        return True
    classes = inspect.getmro(owner) if inspect.isclass(owner) else ()
    pattern = re.compile(rf"self\.{re.escape(attr)}\s*(=|:)")
    return any(pattern.search(inspect.getsource(c)) for c in classes if c.__module__.startswith("trl"))


@pytest.mark.parametrize(("path", "attr"), PRIVATE_SURFACE + PUBLIC_SURFACE, ids=lambda x: str(x))
def test_trl_still_has(path, attr):
    owner = _resolve(path)
    assert _defines(owner, attr), (
        f"TRL {importlib.metadata.version('trl')}: {path}.{attr} moved or was removed; "
        "tulu_kit/trainers.py relies on it (see PRIVATE_SURFACE there)"
    )


def test_trl_is_pinned_exactly():
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(re.fullmatch(r"trl==[\d.]+", d) for d in deps["dependencies"]), "pin TRL exactly (trl==X.Y.Z)"


def test_no_other_module_touches_trl_private_names():
    """Only tulu_kit/trainers.py overrides or reads TRL's private names."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "tulu_kit"
    names = {attr for _, attr in PRIVATE_SURFACE if attr.startswith("_")}
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "trainers.py":
            continue
        text = path.read_text()
        offenders += [
            f"{path.relative_to(root)}: {n}" for n in names if re.search(rf"\.{n}\b|def {n}\b", text)
        ]
    assert not offenders, offenders
