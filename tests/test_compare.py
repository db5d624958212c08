"""`rsp compare`: paired tables across eval runs (before/after training) and its refusals."""

from __future__ import annotations

import json

import pytest

from rsp.cli import main
from rsp.records import SampleRecord, append_samples
from rsp.reporting import compare_runs, parse_arm, summarise


def _fake_run(path, method: str, correct_by_problem: dict[str, list[bool]], *, n: int, task: str = "arith"):
    path.mkdir(parents=True)
    config = {
        "methods": [method],
        "n": n,
        "task": task,
        "arith_steps": 1,
        "arith_max_value": 10,
        "split": "test",
    }
    (path / "config.json").write_text(json.dumps({"kind": "eval", "config": config}))  # schema version 0
    append_samples(
        path / "samples.jsonl",
        [
            SampleRecord(
                problem_id=pid,
                method=method,
                attempt=a,
                rsp_seed=None,
                decode_seed=0,
                prompt_hash="0" * 16,
                completion="1" if ok else str(a + 2),
                token_ids=[1, 2, 3, 4, 5],
                num_tokens=5,
                finish_reason="stop",
                extracted="1" if ok else str(a + 2),
                gold="1",
                correct=ok,
                grade_method="numeric",
            )
            for pid, outcomes in correct_by_problem.items()
            for a, ok in enumerate(outcomes)
        ],
    )


def test_compare_pairs_problems_across_runs(tmp_path):
    before = {f"p{i}": [False, False, False, i % 2 == 0] for i in range(6)}
    after = {f"p{i}": [True, False, True, True] for i in range(6)}
    _fake_run(tmp_path / "base", "rsp", before, n=4)
    _fake_run(tmp_path / "trained", "rsp", after, n=4)
    summary = compare_runs(
        [parse_arm(f"before={tmp_path / 'base'}:rsp"), parse_arm(f"after={tmp_path / 'trained'}:rsp")]
    )
    assert summary["problems"] == 6
    assert summary["methods"]["before"]["accuracy"]["mean"] == pytest.approx(3 / 24)
    assert summary["methods"]["after"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["paired"]["after"]["accuracy"]["mean"] == pytest.approx(0.75 - 3 / 24)
    # Same numbers as summarising one run that holds both arms.
    merged = [{**r, "method": "before"} for r in _records(tmp_path / "base")] + [
        {**r, "method": "after"} for r in _records(tmp_path / "trained")
    ]
    assert summarise(merged, ["before", "after"], 4)["paired"] == summary["paired"]


def _records(run):
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_compare_cli_writes_files_and_refuses_mismatched_runs(tmp_path, capsys):
    _fake_run(tmp_path / "a", "temperature", {"p0": [True, False]}, n=2)
    _fake_run(tmp_path / "b", "rsp", {"p0": [True, True]}, n=2)
    _fake_run(tmp_path / "c", "rsp", {"p0": [True, True, False]}, n=3)
    assert (
        main(
            [
                "compare",
                "--arm",
                f"x={tmp_path / 'a'}:temperature",
                "--arm",
                f"y={tmp_path / 'b'}:rsp",
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    assert "| y |" in (tmp_path / "cmp" / "summary.md").read_text()
    assert (tmp_path / "cmp" / "passk.png").stat().st_size > 0
    assert (
        main(["compare", "--arm", f"x={tmp_path / 'a'}:temperature", "--arm", f"y={tmp_path / 'c'}:rsp"]) == 2
    )
    assert "same problems and n" in capsys.readouterr().err
    assert main(["compare", "--arm", f"x={tmp_path / 'a'}:rsp", "--arm", f"y={tmp_path / 'b'}:rsp"]) == 2
    assert "has no method 'rsp'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="LABEL=RUN_DIR:METHOD"):
        parse_arm("just-a-path")
