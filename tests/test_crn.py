"""Common random numbers in `rsp eval`: both arms of a paired comparison decode from one random stream.

With them, two methods whose injections are identical make identical attempts, so what differs between
arms is what the injection changes, not independent sampling noise; without them (every run made before
the setting existed) each method's decode seed is derived from its name. An old run must resume exactly
as it began.
"""

from __future__ import annotations

import json

import pytest

from rsp.core.injection import NoInjection
from rsp.evaluation import EvalConfig, run_eval
from rsp.generation import WorkBatch, decode_seed_for
from rsp.methods import _REGISTRY, register_method
from rsp.models import load_model
from rsp.runio import read_jsonl_records

TWIN = "temperature-twin"  # a second name for exactly the temperature method's injection


@pytest.fixture
def twin_method():
    """`temperature` under another name, registered for one test."""
    register_method(TWIN, "test: the temperature method's injection under another name", category="baseline")(
        lambda lm, o: NoInjection(o.position)
    )
    yield TWIN
    _REGISTRY.pop(TWIN, None)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32")


def _config(model_dir, **kw) -> EvalConfig:
    base = dict(
        model=str(model_dir),
        limit=3,
        n=4,
        methods=("temperature", TWIN),
        rsp_length=2,
        max_new_tokens=8,
        batch_size=4,
        temperature=1.5,  # hot enough that two independent streams sample different tokens
        dtype="float32",
    )
    base.update(kw)
    return EvalConfig(**base)


def _by_method(records) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        key = (r["problem_id"], r["attempt"])
        out.setdefault(r["method"], {})[key] = (tuple(r["token_ids"]), r["decode_seed"])
    return out


def test_decode_seeds_leave_the_method_out_only_with_common_random_numbers():
    a, b = WorkBatch("temperature", 3, 1, ()), WorkBatch("rsp", 3, 1, ())
    assert decode_seed_for(0, a, common=True) == decode_seed_for(0, b, common=True)
    assert decode_seed_for(0, a) != decode_seed_for(0, b), "without them each method has its own stream"
    assert decode_seed_for(0, a, common=True) != decode_seed_for(0, WorkBatch("rsp", 4, 1, ()), common=True)


def test_with_common_random_numbers_identical_injections_give_identical_attempts(
    tmp_path, tiny_model_dir, tiny_loaded, twin_method
):
    run = run_eval(_config(tiny_model_dir), tmp_path / "crn", lm=tiny_loaded, progress=False)
    arms = _by_method(run.records)
    assert arms["temperature"] == arms[twin_method]
    assert len({ids for ids, _ in arms["temperature"].values()}) > 1, "sampled, not one repeated attempt"

    off = run_eval(
        _config(tiny_model_dir, common_random_numbers=False), tmp_path / "off", lm=tiny_loaded, progress=False
    )
    arms = _by_method(off.records)
    differ = [k for k in arms["temperature"] if arms["temperature"][k][0] != arms[twin_method][k][0]]
    assert differ, "independent streams: the same injection samples other attempts"


def test_new_runs_record_the_setting_and_old_runs_resume_without_it(tmp_path, tiny_model_dir, tiny_loaded):
    cfg = EvalConfig(**{**_config(tiny_model_dir).__dict__, "methods": ("temperature", "rsp")})
    assert cfg.common_random_numbers, "on by default for new runs"
    run_eval(cfg, tmp_path / "new", lm=tiny_loaded, progress=False, max_batches=1)
    saved = json.loads((tmp_path / "new" / "config.json").read_text())["config"]
    assert saved["common_random_numbers"] is True
    assert EvalConfig.from_dict(saved).common_random_numbers

    # A run made before the setting existed: its config.json has no such key, its seeds named the method.
    old_cfg = EvalConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "common_random_numbers"})
    assert not old_cfg.common_random_numbers, "a saved config without the key means off"
    assert "common_random_numbers" not in old_cfg.to_dict()
    run_eval(old_cfg, tmp_path / "whole", lm=tiny_loaded, progress=False)
    run_eval(old_cfg, tmp_path / "old", lm=tiny_loaded, progress=False, max_batches=2)
    # resumed by today's command line, whose default is on: it continues with the old seeds
    resumed = run_eval(cfg, tmp_path / "old", lm=tiny_loaded, progress=False)
    assert not resumed.config.common_random_numbers
    samples = "samples.jsonl"
    assert (tmp_path / "old" / samples).read_bytes() == (tmp_path / "whole" / samples).read_bytes()
    saved = json.loads((tmp_path / "old" / "config.json").read_text())["config"]
    assert "common_random_numbers" not in saved, "the old run's config is left as it was"
    records = read_jsonl_records(tmp_path / "old" / "samples.jsonl")
    seeds = {r["method"]: r["decode_seed"] for r in records if r["problem_id"] == records[0]["problem_id"]}
    assert seeds["temperature"] != seeds["rsp"], "the old scheme: one stream per method"
