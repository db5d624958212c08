"""lm-evaluation-harness integration: `rsp-hf` gives every request its own RSP inside lm-eval's own pipeline,
`rsp_length=0` is lm-eval's `hf`, logged samples carry the seeds, and the shipped tasks' metrics are rsp's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "lm_eval",
    reason="lm-evaluation-harness is not installed (pip install "
    "'random-soft-prompts[lm-eval]'; scripts/test.sh installs it)",
)

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import claim_once_per_session, make_tiny_model_dir  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from rsp.core.seeds import derive_seed  # noqa: E402
from rsp.integrations.lm_eval import (  # noqa: E402
    RSPHFLM,
    TASKS_DIR,
    RSPArgumentError,
    RSPSettings,
    request_seeds,
)
from rsp.integrations.lm_eval_cli import with_rsp_tasks  # noqa: E402
from rsp.integrations.lm_eval_samples import convert, read_samples, sample_completions, sample_seeds  # noqa: E402
from rsp.methods import RSPConfig  # noqa: E402
from rsp.metrics.passk import pass_at_k  # noqa: E402
from rsp.tasks.grading import Grader  # noqa: E402

# One xdist worker for the file (`--dist loadgroup`): the module-scoped `rsp lm-eval` run on SmolLM2 (40 s)
# and the tiny model are made once.
pytestmark = pytest.mark.xdist_group("lm_eval")


def arith_variant(folder: Path, name: str, *, repeats: int, max_gen_toks: int, sample: bool = True) -> Path:
    """A task config that includes the shipped rsp_arith and overrides repeats and decoding."""
    folder.mkdir(parents=True, exist_ok=True)
    decoding = (
        "  do_sample: true\n  temperature: 0.7\n" if sample else "  do_sample: false\n  temperature: 0.0\n"
    )
    (folder / f"{name}.yaml").write_text(
        f"include: {TASKS_DIR / 'rsp_arith.yaml'}\ntask: {name}\nrepeats: {repeats}\n"
        f"generation_kwargs:\n  until: []\n{decoding}  max_gen_toks: {max_gen_toks}\n"
    )
    return folder


def evaluate(lm, task: str, include: Path, limit: int, *, chat: bool = True) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        limit=limit,
        log_samples=True,
        apply_chat_template=chat,
        task_manager=TaskManager(include_path=[str(TASKS_DIR), str(include)], include_defaults=False),
    )


def responses(results: dict, task: str) -> list[list[str]]:
    return [s["resps"][0] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


# ---------------------------------------------------------------- arguments and wiring (no model)
@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("rsp_length=-1", "rsp_length"),
        ("method=bogus", "method"),
        ("rsp_position=middle", "rsp_position"),
        ("rsp_lenght=4", "rsp_lenght"),
        ("rsp_scale=-0.5", "rsp_scale"),
    ],
)
def test_bad_model_args_fail_before_loading_with_a_message_naming_the_argument(arg, named):
    with pytest.raises(RSPArgumentError, match=named):
        get_model("rsp-hf").create_from_arg_string(f"pretrained=/nonexistent/model,{arg}")


def test_model_args_build_the_librarys_rsp_config_and_the_base_seed():
    kwargs = {
        "rsp_length": "2",
        "rsp_scale": "0.5",
        "rsp_position": "prepend",
        "method": "embed-noise",
        "rsp_stats_rows": "tokens",
        "rsp_stats_mean": "per_dim",
        "noise_alpha": 5,
        "seed": "7",
        "batch_size": 4,
    }
    settings = RSPSettings.pop_from(kwargs, "rsp-hf")
    assert settings.config == RSPConfig(
        length=2,
        scale=0.5,
        position="prepend",
        method="embed-noise",
        stats_rows="tokens",
        stats_mean="per_dim",
        method_options={"noise_alpha": 5},
    )
    assert settings.seed == 7 and kwargs == {"batch_size": 4}
    assert settings.info()["seed"] == 7 and settings.info()["method"] == "embed-noise"


def test_rsp_vllm_reads_seed_and_leaves_it_for_vllm():
    kwargs = {"seed": 3, "rsp_length": 2}
    assert RSPSettings.pop_from(kwargs, "rsp-vllm", shared=("seed",)).seed == 3
    assert kwargs == {"seed": 3}


@pytest.mark.slow
def test_rsp_lm_eval_cli_reports_a_bad_model_arg_by_name(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsp.cli",
            "lm-eval",
            "--model",
            "rsp-hf",
            "--model_args",
            "pretrained=/nonexistent/model,rsp_length=-1",
            "--tasks",
            "rsp_arith",
            "--limit",
            "1",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rsp_length must be >= 0" in proc.stderr


def test_shipped_task_folder_comes_first_and_the_users_include_path_is_kept():
    assert with_rsp_tasks(None, "/rsp") == ["/rsp"]
    assert with_rsp_tasks("/mine", "/rsp") == ["/rsp", "/mine"]
    assert with_rsp_tasks(["/a", "/rsp"], "/rsp") == ["/rsp", "/a"]


def test_shipped_task_configs_are_indexed_by_lm_eval():
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_defaults=False, include_path=str(TASKS_DIR)).all_tasks
    assert {"rsp_arith", "rsp_gsm8k_cot", "rsp_math500"} <= set(tasks)
    assert not any(t.startswith("_") for t in tasks)


class _PerAttempt:
    """The seed rule of RandomSoftPrompt (granularity "attempt"), without its statistics."""

    def seed_for(self, base_seed: int, problem_id: str, attempt: int) -> int:
        return derive_seed(base_seed, "rsp", problem_id, attempt)


def test_offline_benchmark_tasks_read_the_local_jsonl_through_lm_eval():
    from lm_eval.tasks import TaskManager

    from rsp.tasks.datasets import find_data_file
    from rsp.tasks.prompts import INSTRUCTION

    if find_data_file("gsm8k_test.jsonl") is None or find_data_file("math500.jsonl") is None:
        pytest.skip("gsm8k_test.jsonl / math500.jsonl not found under $RSP_DATA_DIR or ../shared/data")
    tasks = TaskManager(include_defaults=False, include_path=str(TASKS_DIR)).load(
        ["rsp_gsm8k_cot", "rsp_math500"]
    )
    tasks = tasks["tasks"]
    gsm8k, math500 = tasks["rsp_gsm8k_cot"], tasks["rsp_math500"]
    docs = list(gsm8k.test_docs())
    assert len(docs) == 1319 and docs[0]["rsp_problem_id"] == "gsm8k-test-0000" and docs[0]["answer"] == "18"
    assert gsm8k.doc_to_text(docs[0]).endswith(INSTRUCTION) and gsm8k.config.repeats == 16
    assert len(list(math500.test_docs())) == 500


def test_repeats_of_one_request_get_distinct_seeds_keyed_by_problem_id_and_repeat():
    inj = _PerAttempt()
    a = Instance("generate_until", {"rsp_problem_id": "arith-1"}, ("q", {}), 0, ("t", 0, 3))
    b = Instance("generate_until", {"question": "x"}, ("q", {}), 0, ("t", 1, 3))
    seeds = request_seeds([a, a, a, b, b, b], inj, 7)
    assert seeds[:3] == [
        derive_seed(7, "rsp", "arith-1", r) for r in range(3)
    ]  # rsp eval's seed_for(7, pid, r)
    assert seeds[3:] == [derive_seed(7, "rsp", "t:1", r) for r in range(3)]
    assert len(set(seeds)) == 6


# ---------------------------------------------------------------- tiny model, in process
@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """A tiny Llama whose greedy outputs depend on the prompt and on the injected rows."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("lm-eval-tiny"), arch="vllm-llama")


def _tiny(cls, path, **kw):
    return cls(pretrained=str(path), device="cpu", dtype="float32", batch_size=3, **kw)


@pytest.mark.slow
def test_rsp_length_0_gives_lm_evals_hf_greedy_outputs_and_length_4_does_not(sharp_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM

    include = arith_variant(tmp_path, "rsp_arith_greedy", repeats=2, max_gen_toks=12, sample=False)
    plain = responses(evaluate(_tiny(HFLM, sharp_dir), "rsp_arith_greedy", include, 5), "rsp_arith_greedy")
    off = _tiny(RSPHFLM, sharp_dir, rsp_length=0)
    assert off.rsp_handle is None and "generate" not in vars(off.model)  # nothing attached at all
    assert responses(evaluate(off, "rsp_arith_greedy", include, 5), "rsp_arith_greedy") == plain
    on = responses(
        evaluate(_tiny(RSPHFLM, sharp_dir, rsp_length=4), "rsp_arith_greedy", include, 5), "rsp_arith_greedy"
    )
    assert on != plain  # the comparison can tell an injecting model apart
    assert any(len(set(r)) > 1 for r in on)  # greedy repeats differ only through their own RSPs


def test_rsp_hf_greedy_completions_equal_rsp_generate_with_the_same_seeds(sharp_dir):
    from rsp.generation import Generator, RSPConfig
    from rsp.tasks.prompts import tokenize_prompt

    lm = _tiny(RSPHFLM, sharp_dir, rsp_length=3, seed=5)
    questions = ["2+3?", "a longer question, 7*6?", "1?"]
    gen = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 8}
    reqs = [
        Instance(
            "generate_until",
            {"rsp_problem_id": f"p{i}"},
            (lm.apply_chat_template([{"role": "user", "content": q}]), dict(gen)),
            0,
            ("t", i, 2),
        )
        for i, q in enumerate(questions)
    ]
    out = lm.generate_until([r for r in reqs for _ in range(2)])
    assert lm.generate_until([r for r in reqs for _ in range(2)]) == out  # the same requests again: same RSPs
    assert all(len(r.arguments) == 3 for r in reqs)  # (context, gen_kwargs, seed log): the log is replaced
    assert [r.arguments[-1]["rsp_seeds"] for r in reqs] == [
        [lm.rsp_handle.injection.seed_for(5, f"p{i}", a) for a in range(2)] for i in range(3)
    ]
    lm.rsp_handle.detach()  # the reference engine attaches its own hook
    generator = Generator((lm.model, lm.tokenizer), engine="hf")
    prompts = [tokenize_prompt(lm.tokenizer, [{"role": "user", "content": q}]) for q in questions]
    ref = generator.generate(
        prompts,
        n=2,
        rsp=RSPConfig(length=3),
        temperature=0.0,
        max_new_tokens=8,
        seed=5,
        keys=[f"p{i}" for i in range(3)],
    )
    assert out == [s.text for o in ref for s in o.samples]


def _manual_loglikelihood(lm: RSPHFLM, context: str, continuation: str, seed: int | None) -> float:
    ctx, cont = lm._encode_pair(context, continuation)
    ids = ctx + ([lm.rsp_handle.placeholder_id] * lm.rsp_injection.length if seed is not None else []) + cont
    with torch.no_grad(), lm.rsp_handle.use_seeds([seed]):
        logp = torch.log_softmax(lm.model(torch.tensor([ids[:-1]])).logits.float(), -1)[0]
    return float(sum(logp[len(ids) - 1 - len(cont) + j, t] for j, t in enumerate(cont)))


def test_loglikelihood_requests_are_scored_under_their_documents_rsp(sharp_dir):
    from lm_eval.models.huggingface import HFLM

    lm = _tiny(RSPHFLM, sharp_dir, rsp_length=2)
    docs = [
        ("Q: 1+1? A:", [" 2", " 3 apples"]),
        ("Q: a much longer question here? A:", [" yes", " no"]),
        ("Q: x? A:", [" 4"]),
    ]
    reqs = [
        Instance("loglikelihood", {"question": c}, (c, ch), j, ("mc", d, 2))
        for d, (c, chs) in enumerate(docs)
        for j, ch in enumerate(chs)
    ]
    batch = [r for r in reqs for _ in range(2)]  # repeats: 2, as lm-eval passes them
    got = lm.loglikelihood(batch)
    assert lm.loglikelihood(batch) == got and all(len(r.arguments) == 3 for r in reqs)
    seeds = request_seeds(batch, lm.rsp_injection, 0)
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]  # per repeat; the choices of a doc share it
    for req, seed, (ll, _) in zip(batch, seeds, got, strict=True):
        assert ll == pytest.approx(_manual_loglikelihood(lm, *req.args[:2], seed), abs=1e-3)
    assert [r.arguments[-1]["rsp_seeds"] for r in reqs] == [
        seeds[2 * i : 2 * i + 2] for i in range(len(reqs))
    ]
    plain = [(c, ch) for c, chs in docs for ch in chs]
    fresh = [Instance("loglikelihood", {}, a, 0, ("mc", 0, 1)) for a in plain]
    assert _tiny(RSPHFLM, sharp_dir, rsp_length=0).loglikelihood(fresh) == _tiny(
        HFLM, sharp_dir
    ).loglikelihood([Instance("loglikelihood", {}, a, 0, ("mc", 0, 1)) for a in plain])


# ---------------------------------------------------------------- SmolLM2, a real `rsp lm-eval` run
@pytest.fixture(scope="module")
def smol_run(tmp_path_factory, request):
    """`rsp lm-eval` with rsp-hf on SmolLM2: 2 arithmetic problems x 4 repeats, 32 new tokens, logged
    samples."""
    claim_once_per_session(request, "smol_run")
    base = tmp_path_factory.mktemp("lm-eval-smol")
    include = arith_variant(base / "tasks", "rsp_arith_r4", repeats=4, max_gen_toks=32)
    out = base / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsp.cli",
            "lm-eval",
            "--model",
            "rsp-hf",
            "--model_args",
            "pretrained=smollm2-135m-instruct,rsp_length=4,seed=0",
            "--device",
            "cpu",
            "--batch_size",
            "8",
            "--tasks",
            "rsp_arith_r4",
            "--include_path",
            str(include),
            "--limit",
            "2",
            "--apply_chat_template",
            "--log_samples",
            "--output_path",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = read_samples(next(out.rglob("samples_rsp_arith_r4_*.jsonl")))
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    return {
        "samples": sorted(samples, key=lambda s: s["doc_id"]),
        "results": results,
        "include": include,
        "out": out,
    }


@pytest.mark.real_model
def test_each_repeat_of_a_doc_carries_its_own_rsp_seed_and_completions_differ(smol_run):
    assert len(smol_run["samples"]) == 2
    for s in smol_run["samples"]:
        seeds, texts = sample_seeds(s), sample_completions(s)
        assert len(seeds) == 4 and len(set(seeds)) == 4
        assert seeds == [derive_seed(0, "rsp", s["doc"]["rsp_problem_id"], r) for r in range(4)]  # rsp eval's
        assert len(set(texts)) > 1
    assert smol_run["results"]["config"]["rsp"]["injecting"] is True


@pytest.mark.real_model
def test_shipped_task_pass_at_k_equals_rsp_pass_at_k_on_the_logged_samples(smol_run):
    with Grader() as grader:
        per_doc = []
        for s in smol_run["samples"]:
            c = sum(grader.grade(t, s["doc"]["answer"]).correct for t in sample_completions(s))
            for k in (1, 2, 4):
                assert s[f"pass@{k}"] == pytest.approx(pass_at_k(4, c, k))
            per_doc.append(c)
    agg = smol_run["results"]["results"]["rsp_arith_r4"]
    for k in (1, 2, 4):
        assert agg[f"pass@{k},repeats"] == pytest.approx(
            sum(pass_at_k(4, c, k) for c in per_doc) / len(per_doc)
        )
    assert agg["acc,repeats"] == pytest.approx(sum(per_doc) / (4 * len(per_doc)))


@pytest.mark.real_model
def test_rerun_with_the_same_seeds_through_the_python_route_logs_the_same_completions(smol_run):
    lm = RSPHFLM(pretrained="smollm2-135m-instruct", rsp_length=4, seed=0, device="cpu", batch_size=8)
    again = evaluate(lm, "rsp_arith_r4", smol_run["include"], 2)
    assert responses(again, "rsp_arith_r4") == [sample_completions(s) for s in smol_run["samples"]]
    logged = sorted(again["samples"]["rsp_arith_r4"], key=lambda s: s["doc_id"])
    assert [sample_seeds(s) for s in logged] == [sample_seeds(s) for s in smol_run["samples"]]


@pytest.mark.real_model
def test_logged_samples_convert_to_an_rsp_run_that_rsp_report_reads(smol_run, tmp_path):
    from rsp.records import read_eval_run
    from rsp.reporting import summarise

    path = next(smol_run["out"].rglob("samples_rsp_arith_r4_*.jsonl"))
    run = convert({"rsp": path}, tmp_path / "run", model="smollm2-135m-instruct")
    saved, records = read_eval_run(run)
    assert len(records) == 8 and {r["rsp_seed"] for r in records} == {
        x for s in smol_run["samples"] for x in sample_seeds(s)
    }
    summary = summarise(records, ["rsp"], 4)
    agg = smol_run["results"]["results"]["rsp_arith_r4"]
    assert summary["methods"]["rsp"]["pass@2"]["mean"] == pytest.approx(agg["pass@2,repeats"])
    cfg = saved.config
    assert (cfg["rsp_length"], cfg["n"], cfg["max_new_tokens"], cfg["prompt_style"]) == (4, 4, 32, "chat")
