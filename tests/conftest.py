"""Shared fixtures: the tiny model, the real public data beside the repo (skipped when absent), a notebook runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and quiet, whatever the environment says: tests never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "disabled"

# `make test` runs pytest-xdist workers (pytest -n), one per core. Their torch threads (and those of the kernels and
# launches they start) wait passively: spin-waiting, two processes of two threads on two cores run several times
# slower than one (measured: 60 pretraining steps 11.9 s alone, 33.2 s beside a busy process; passive 13.8 s and
# 17.9 s). The whole suite took as long as with one thread per worker (797 s against 801 s of pytest).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TULU_KIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a tiny model built once per session (seed 0); treat it as read-only."""
    from tulu_kit.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture
def shared_data() -> Path:
    """The real public data files beside the repo; the test is skipped when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def run_notebook(tmp_path):
    """Execute a notebook of the repo with papermill and given parameters; returns the executed notebook."""
    import nbformat
    import papermill as pm

    def _run(path: str | Path, params: dict):
        src = REPO / path
        out = tmp_path / f"executed_{src.name}"
        pm.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            cwd=str(src.parent),
            kernel_name="python3",
            progress_bar=False,
        )
        return nbformat.read(out, as_version=4)

    return _run


@pytest.fixture(autouse=True)
def one_distributed_job_at_a_time(request):
    """Tests marked ``distributed`` start jobs of several processes (gloo, DeepSpeed); under `pytest -n` they take
    turns (a lock per test session), so two such jobs never share the cores (four ranks on two cores) or race at
    their rendezvous."""
    session = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if session is None or request.node.get_closest_marker("distributed") is None:
        yield
        return
    import tempfile

    from filelock import FileLock

    with FileLock(os.path.join(tempfile.gettempdir(), f"tulu-kit-distributed-{session}.lock")):
        yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "distributed: starts a job of several processes (one such test at a time)"
    )


def pytest_collection_modifyitems(items):
    """The demo's module (test_pipeline.py, by far the longest) first, so that `pytest -n` workers share out the
    other modules around it instead of starting it last."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")
