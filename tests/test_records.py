"""Typed run records (`rsp.records`) and the schema version in config.json (`rsp.runio`).

Claims: records round-trip through the typed schema; runs written before the version existed (version 0)
still read, resume and report identically; a run from a newer rsp is refused by name through `rsp report`,
`rsp compare`, `rsp analyze` and resume; a malformed line is named by file, line and field.
"""

from __future__ import annotations

import json
import random

import pytest

from rsp.analysis.run import analyse_run
from rsp.cli import main
from rsp.records import (
    RecordError,
    RolloutRecord,
    SampleRecord,
    append_rollouts,
    append_samples,
    read_eval_run,
    read_rollouts,
    read_samples,
    write_rollouts,
)
from rsp.reporting import compare_runs, summarise
from rsp.runio import SCHEMA_VERSION, RunDirError, prepare_run_dir, read_run_config

# config.json and sample lines exactly as rsp eval wrote them before the schema version (runs/findings/...,
# runs/lm-eval-compare/...): no schema_version key, the pre-rename config keys (position, method_extra).
V0_CONFIG = {
    "config": {
        "arith_max_value": 10,
        "arith_steps": 1,
        "batch_size": 32,
        "device": "cpu",
        "dtype": "auto",
        "engine": "lean",
        "grader_timeout": 5.0,
        "limit": 4,
        "max_new_tokens": 128,
        "method_extra": {},
        "methods": ["temperature", "rsp"],
        "min_p": 0.0,
        "model": "smollm2-135m-instruct",
        "n": 4,
        "position": "after_generation_prompt",
        "prompt_style": "auto",
        "rsp_length": 4,
        "rsp_scale": 1.0,
        "seed": 0,
        "split": "test",
        "stats_mean": "scalar",
        "stats_rows": "all",
        "task": "arith",
        "temperature": 0.7,
        "top_k": 0,
        "top_p": 1.0,
    },
    "config_hash": "7a6deed04ca1cad9",
    "kind": "eval",
}
V0_SAMPLE_LINE = (
    '{"problem_id": "arith-s1-m10-test-00002", "method": "temperature", "attempt": 18, "rsp_seed": null, '
    '"decode_seed": 940655015155188748, "prompt_hash": "35ea365a571e988e", "completion": "10 + 2 = 20, which '
    'is the answer.", "token_ids": [33, 32, 1232, 216, 34, 446, 216, 34, 32, 28, 527, 314, 260, 2988, 30], '
    '"num_tokens": 15, "finish_reason": "stop", "extracted": "20,", "gold": "8", "correct": false, '
    '"grade_method": "math-verify"}'
)
# A line of rsp.integrations.lm_eval_samples' conversion: no decode seed or finish reason, retokenised ids.
V0_CONVERTED_LINE = (
    '{"problem_id": "arith-s1-m10-test-00008", "method": "temperature", "attempt": 6, "rsp_seed": null, '
    '"decode_seed": null, "prompt_hash": "3041376d2521b945", "completion": "Ava has 9 pencils.\\n#### 2", '
    '"token_ids": [49, 8042, 553, 216, 41, 25487, 30, 198, 1229, 216, 34], "num_tokens": 11, '
    '"token_ids_source": "retokenised", "finish_reason": null, "extracted": "2", "gold": "14", '
    '"correct": false, "grade_method": "numeric"}'
)


def _sample(problem: int, method: str, attempt: int, correct: bool) -> SampleRecord:
    rec = json.loads(V0_SAMPLE_LINE)
    rec.update(
        problem_id=f"arith-s1-m10-test-{problem:05d}",
        method=method,
        attempt=attempt,
        rsp_seed=None if method == "temperature" else 1000 * problem + attempt,
        correct=correct,
        extracted="8" if correct else str(attempt),
    )
    return rec


def _v0_run(path, *, config=V0_CONFIG):
    """A run directory in the previous format, written the way the old code wrote it (json.dumps per line)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    rng = random.Random(0)
    records = [
        _sample(p, m, a, rng.random() < (0.3 if m == "temperature" else 0.6))
        for m in ("temperature", "rsp")
        for p in range(4)
        for a in range(4)
    ]
    (path / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


def _rollout(step: int, i: int) -> RolloutRecord:
    return RolloutRecord(
        step=step,
        problem_id=f"p{i}",
        rsp_seed=None if i == 0 else 7 * i,
        completion="réponse 4",  # non-ASCII survives the round trip
        token_ids=[1, 2, i],
        finish_reason="stop",
        correct=i % 2 == 0,
        reward=1.0 if i % 2 == 0 else -1.0,
        advantage=0.5 - i,
        kept=i != 3,
    )


def test_samples_and_rollouts_round_trip_through_the_typed_schema(tmp_path):
    samples = [_sample(0, "rsp", a, a % 2 == 0) for a in range(3)] + [json.loads(V0_CONVERTED_LINE)]
    path = tmp_path / "samples.jsonl"
    append_samples(path, samples[:2])
    append_samples(path, samples[2:])
    assert read_samples(path) == samples

    rollouts = [_rollout(s, i) for s in (1, 2) for i in range(4)]
    rpath = tmp_path / "rollouts.jsonl"
    for step in (1, 2):
        append_rollouts(rpath, [r for r in rollouts if r["step"] == step])
    assert read_rollouts(rpath) == rollouts
    write_rollouts(rpath, rollouts[:4])  # what a resume keeps
    assert read_rollouts(rpath) == rollouts[:4]


def test_writers_refuse_a_record_outside_the_schema(tmp_path):
    path = tmp_path / "samples.jsonl"
    incomplete = {k: v for k, v in _sample(0, "rsp", 0, True).items() if k != "gold"}
    with pytest.raises(ValueError, match=r"missing \['gold'\]"):
        append_samples(path, [incomplete])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"undeclared \['step'\]"):
        append_samples(path, [{**_sample(0, "rsp", 0, True), "step": 1}])  # type: ignore[list-item]
    assert not path.exists()  # nothing half-written


def test_a_record_from_the_previous_format_still_reads(tmp_path):
    run = tmp_path / "old"
    _v0_run(run)
    with open(run / "samples.jsonl", "a") as f:
        f.write(V0_CONVERTED_LINE + "\n")
    saved, records = read_eval_run(run)
    assert saved.schema_version == 0 and saved.kind == "eval" and saved.config == V0_CONFIG["config"]
    raw = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert records == raw and records[-1]["token_ids_source"] == "retokenised"


def test_a_run_in_the_previous_format_reports_identically(tmp_path, capsys):
    old = tmp_path / "old"
    records = _v0_run(old)
    assert main(["report", "--run", str(old)]) == 0
    reported = json.loads((old / "summary.json").read_text())
    # The numbers the old reader gave: the raw lines summarised directly.
    expected = summarise(records, ["temperature", "rsp"], 4, seed=0)
    assert {k: reported[k] for k in expected} == json.loads(json.dumps(expected))
    assert "(T=0.7, RSP L=4, after_generation_prompt)" in (old / "summary.md").read_text()
    # The same records written by this rsp into a version-1 run report the same table.
    new = tmp_path / "new"
    prepare_run_dir(new, V0_CONFIG["config"], kind="eval")
    append_samples(new / "samples.jsonl", records)
    assert read_run_config(new).schema_version == SCHEMA_VERSION
    assert main(["report", "--run", str(new)]) == 0
    assert json.loads((new / "summary.json").read_text()) == reported
    assert (new / "summary.md").read_text() == (old / "summary.md").read_text()


def test_an_old_run_directory_still_resumes_and_is_left_as_it_was(tmp_path):
    run = tmp_path / "old"
    _v0_run(run)
    before = (run / "config.json").read_bytes()
    assert prepare_run_dir(run, V0_CONFIG["config"], kind="eval") is True
    assert (run / "config.json").read_bytes() == before
    with pytest.raises(RunDirError, match="different settings.*n: 4 -> 8"):
        prepare_run_dir(run, {**V0_CONFIG["config"], "n": 8}, kind="eval")


def test_a_new_run_directory_records_the_schema_version(tmp_path):
    assert prepare_run_dir(tmp_path / "r", {"a": 1}, kind="eval") is False
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["schema_version"] == SCHEMA_VERSION == 1
    assert read_run_config(tmp_path / "r", kind="eval").config == {"a": 1}


def _future_run(path, version: int = 3):
    _v0_run(path, config={**V0_CONFIG, "schema_version": version})


FUTURE = r"was written by a newer rsp \(schema version 3; this rsp reads up to 1\): upgrade rsp"


def test_rsp_report_says_a_run_is_from_a_newer_rsp(tmp_path, capsys):
    _future_run(tmp_path / "future")
    assert main(["report", "--run", str(tmp_path / "future")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsp report: error: ")
    assert f"{tmp_path / 'future'} was written by a newer rsp" in err
    assert "(schema version 3; this rsp reads up to 1): upgrade rsp" in err
    assert not (tmp_path / "future" / "summary.json").exists()


def test_every_reader_refuses_a_run_from_a_newer_rsp(tmp_path):
    _future_run(tmp_path / "future")
    _v0_run(tmp_path / "old")
    with pytest.raises(RunDirError, match=FUTURE):
        compare_runs([("a", tmp_path / "old", "rsp"), ("b", tmp_path / "future", "rsp")])
    with pytest.raises(RunDirError, match=FUTURE):
        analyse_run(tmp_path / "future", progress=False)  # before any model is loaded
    with pytest.raises(RunDirError, match=FUTURE):  # and resuming it: nothing is appended
        prepare_run_dir(tmp_path / "future", V0_CONFIG["config"], kind="eval")
    with pytest.raises(RecordError, match=FUTURE):
        read_samples(tmp_path / "future" / "samples.jsonl", version=3)


def test_missing_or_unreadable_config_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", "--run", str(tmp_path / "empty")]) == 2
    assert "is not an rsp eval run (no config.json)" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert main(["report", "--run", str(tmp_path / "bad")]) == 2
    assert "config.json exists but is unreadable" in capsys.readouterr().err
    prepare_run_dir(tmp_path / "train", {"a": 1}, kind="train")
    with pytest.raises(RunDirError, match="holds a 'train' run, not an rsp eval run"):
        read_eval_run(tmp_path / "train")


def test_a_malformed_line_is_named_by_file_line_and_field(tmp_path, capsys):
    run = tmp_path / "r"
    _v0_run(run)
    lines = (run / "samples.jsonl").read_text().splitlines()
    broken = {k: v for k, v in json.loads(lines[2]).items() if k not in ("correct", "attempt")}
    lines[2] = json.dumps(broken)
    (run / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'samples.jsonl'}, line 3: sample record lacks field(s) 'attempt', 'correct'" in err
    (run / "samples.jsonl").write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(RecordError, match="line 2: a sample record must be a JSON object"):
        read_samples(run / "samples.jsonl")


def test_a_torn_last_line_is_cut_only_when_resuming(tmp_path):
    path = tmp_path / "samples.jsonl"
    append_samples(path, [_sample(0, "rsp", 0, True)])
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"problem_id": "arith-s1')  # killed mid-write
    assert read_samples(path) == [_sample(0, "rsp", 0, True)]
    assert path.read_bytes() != whole  # a reader leaves the file alone
    assert read_samples(path, repair=True) == [_sample(0, "rsp", 0, True)]
    assert path.read_bytes() == whole
