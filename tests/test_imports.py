"""The import graph points one way: entry points -> stages -> shared modules; evals import no training code.

Read from the source (every ``import``, also inside functions), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "tulu_kit"
ENTRY_POINTS = {"tulu_kit.cli", "tulu_kit.run"}
STAGES = {
    "tulu_kit.quickstart", "tulu_kit.data.stage", "tulu_kit.sft", "tulu_kit.dpo", "tulu_kit.reward",
    "tulu_kit.ppo", "tulu_kit.grpo", "tulu_kit.merge", "tulu_kit.report",
}  # fmt: skip
TRAINING = STAGES - {"tulu_kit.quickstart", "tulu_kit.data.stage", "tulu_kit.report"} | {
    "tulu_kit.training", "tulu_kit.trainers", "tulu_kit.launch", "tulu_kit.losses", "tulu_kit.rewards",
    "tulu_kit.checkpoints",
}  # fmt: skip


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from tulu_kit import sft`
    return {m for m in found if m.startswith("tulu_kit")}


GRAPH = {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def test_the_graph_was_read():
    assert "tulu_kit.sft" in GRAPH and "tulu_kit.training" in GRAPH["tulu_kit.sft"]


def test_no_stage_imports_another_stage_and_shared_modules_import_no_stage():
    bad = []
    for module, imported in GRAPH.items():
        if module in ENTRY_POINTS:
            continue
        for target in imported & STAGES:
            if target != module:
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_evals_import_no_training_code():
    bad = [
        f"{module} imports {target}"
        for module, imported in GRAPH.items()
        if module.startswith("tulu_kit.evals")
        for target in imported & TRAINING
    ]
    assert not bad, bad


def test_nothing_in_the_library_imports_the_entry_points():
    bad = [
        f"{m} imports {t}"
        for m, imported in GRAPH.items()
        if m not in ENTRY_POINTS
        for t in imported & ENTRY_POINTS
    ]
    assert not bad, bad
