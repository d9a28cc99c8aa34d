"""environment.yml and the Dockerfile install what pyproject.toml declares (neither can be built here)."""

from __future__ import annotations

import re
import tomllib

import yaml

from tulu_kit.config import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PYPROJECT["optional-dependencies"]


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _torch_pin() -> str:
    pins = [
        line
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    ]
    assert len(pins) == 1
    return pins[0]


def test_environment_yml_lists_core_gpu_eval_merge_exactly():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    expected = [r for r in PYPROJECT["dependencies"] if _name(r) != "torch"]
    expected += EXTRAS["gpu"] + EXTRAS["eval"] + EXTRAS["merge"]
    assert pip[0] == _torch_pin()
    assert sorted(pip[1:]) == sorted(expected)


def test_dockerfile_installs_pinned_torch_and_every_gpu_extra():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert f"pip install torch=={_torch_pin().split('==')[1]}" in text
    extras = re.search(r'-e "\.\[([^\]]+)\]"', text).group(1).split(",")
    assert all(e in EXTRAS for e in extras)
    installed = {_name(r) for e in extras for r in EXTRAS[e]}
    installed |= {_name(r) for r in re.findall(r'"([a-z][\w-]*>=[\d.]+)"', text)}
    assert {_name(r) for r in EXTRAS["gpu"]} <= installed
    assert {_name(r) for r in EXTRAS["eval"] + EXTRAS["merge"]} <= installed


def test_gpu_extra_covers_quant_and_deepspeed():
    assert set(EXTRAS["quant"]) | set(EXTRAS["deepspeed"]) <= set(EXTRAS["gpu"])
