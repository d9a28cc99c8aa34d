"""environment.yml and the Dockerfile install what pyproject.toml declares (neither can be built here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
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


def test_dockerfile_has_a_vllm_target_on_the_same_pins():
    text = (REPO_ROOT / "Dockerfile").read_text()
    stage = text.split("AS vllm", 1)[1].split("\nFROM", 1)[0]
    assert 'PIP_CONSTRAINT=constraints.txt pip install -e ".[vllm]"' in stage
    assert text.rstrip().splitlines()[-1].startswith("FROM gpu")  # the default image stays without vLLM


def _index_unreachable(url: str) -> str:
    """Why `url` cannot be reached (empty when it can): the resolution test needs a package index."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url.rstrip("/") + "/vllm/", timeout=10).close()
    except (urllib.error.URLError, OSError) as e:
        return f"no package index reachable at {url}: {e}"
    return ""


def test_vllm_extra_resolves_beside_the_kit_pins(tmp_path):
    """Dry-run resolution (no install, no CUDA) of the core + the `vllm` extra under constraints.txt, for a Linux
    x86-64 GPU node with Python 3.11: the versions a `pip install -c constraints.txt -e ".[vllm]"` would get."""
    import os
    import shutil
    import subprocess
    import sys

    from packaging.requirements import Requirement

    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        pytest.skip("uv (dev extra) is not installed")
    index = os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    why = _index_unreachable(index)
    if why:
        pytest.skip(why)
    out = tmp_path / "resolved.txt"
    cmd = [uv, "pip", "compile", str(REPO_ROOT / "pyproject.toml"), "--extra", "vllm"]
    cmd += ["-c", str(REPO_ROOT / "constraints.txt"), "--python-version", "3.11"]
    cmd += ["--python-platform", "x86_64-manylinux_2_28", "--no-header", "--quiet", "-o", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index answered too slowly (over 240 s)")
    if proc.returncode and any(s in proc.stderr for s in ("Failed to fetch", "error sending request", "dns")):
        pytest.skip(f"package index unreachable during resolution: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pins = dict(
        line.split(" ")[0].split("==")
        for line in out.read_text().splitlines()
        if "==" in line and line[0] != " "
    )
    for req in EXTRAS["vllm"]:
        r = Requirement(req)
        assert r.specifier.contains(pins[r.name], prereleases=False), (req, pins[r.name])
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[name] == version, (name, pins[name], version)  # vLLM moves no kit pin
