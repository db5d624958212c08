"""experiments/organism/study.py: the arms pair by problem, the greedy baseline counts N times, an unfinished
run is not read, and each arm's command line says what the study says it runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import study  # noqa: E402


def write_run(root: Path, ckpt: str, arm: study.Arm, correct: dict[str, list[bool]]) -> None:
    d = root / study.out_dir(ckpt, arm)
    d.mkdir(parents=True)
    lines = [
        json.dumps({"method": arm.method, "problem_id": p, "correct": c})
        for p, flags in correct.items()
        for c in flags
    ]
    (d / "samples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.setattr(study, "PROBLEMS", 4)
    return tmp_path


def solved(c: int, n: int = 32) -> list[bool]:
    return [True] * c + [False] * (n - c)


def test_an_arm_is_compared_with_its_baseline_problem_by_problem(small):
    base = {"a": solved(8), "b": solved(0), "c": solved(32), "d": solved(0)}
    arm = {"a": solved(16), "b": solved(1), "c": solved(32), "d": solved(0)}
    write_run(small, "sft", study.Arm("temperature", 0.7), base)
    write_run(small, "sft", study.Arm("rsp", 0.7), arm)
    out = study.compare("sft", study.Arm("rsp", 0.7))
    assert out is not None and out["baseline"] == "t0.7-temperature"
    p1 = out["pass@1"]
    assert p1["baseline"] == pytest.approx((0.25 + 0 + 1 + 0) / 4)
    assert p1["arm"] == pytest.approx((0.5 + 1 / 32 + 1 + 0) / 4)
    assert p1["difference"]["mean"] == pytest.approx((0.25 + 1 / 32) / 4)
    # pass@32 of 32 attempts: 1 for a problem solved at all; only problem b changes
    assert out["pass@32"]["difference"]["mean"] == pytest.approx(0.25)
    assert out["pass@32"]["verdict"] == "no resolved effect"  # one problem of four: the interval holds 0


def test_the_greedy_baseline_is_one_attempt_counted_n_times(small):
    write_run(small, "sft", study.Arm("temperature", 0.0), {p: [p == "a"] for p in "abcd"})
    write_run(small, "sft", study.Arm("rsp", 0.0), {p: solved(1) for p in "abcd"})
    out = study.compare("sft", study.Arm("rsp", 0.0))
    assert out is not None
    assert out["pass@1"]["baseline"] == pytest.approx(0.25)  # problem a solved, counted 32 times of 32
    assert out["pass@32"]["baseline"] == pytest.approx(0.25)
    assert out["pass@32"]["arm"] == pytest.approx(1.0)
    assert out["pass@32"]["verdict"] == "helps"  # +1 on each of three problems, 0 on the fourth


def test_an_unfinished_run_is_not_read(small):
    write_run(small, "sft", study.Arm("temperature", 0.7), {p: solved(32) for p in "abcd"})
    write_run(small, "sft", study.Arm("rsp", 0.7), {p: solved(3, 31 if p == "d" else 32) for p in "abcd"})
    assert study.compare("sft", study.Arm("rsp", 0.7)) is None


def test_each_arm_runs_what_its_name_says():
    for arm in study.ARMS:
        argv = study.argv("sft", arm)
        flag = dict(zip(argv, argv[1:], strict=False))
        assert flag["--methods"] == arm.method and float(flag["--temperature"]) == arm.temperature
        assert int(flag["--rsp-length"]) == arm.length
        assert int(flag["--n"]) == (1 if arm.greedy_baseline else study.ATTEMPTS)
        assert ("--common-random-numbers" in argv) == arm.crn
        assert ("--no-common-random-numbers" in argv) == (not arm.crn)
        assert flag["--out"].endswith(arm.name) and flag["--model"] == study.CHECKPOINTS["sft"]
    names = [a.name for a in study.ARMS]
    assert len(set(names)) == len(names)
