"""Turn lm-eval `--log_samples` files of the shipped `rsp_*` tasks into an `rsp eval` run directory.

Why: `rsp report` (pass@k / maj@k, paired tests) and `rsp analyze` (rebuilt from each attempt's RSP seed)
read rsp's own run format. This writes one rsp record per repeat and a `config.json` saying how to rebuild
the prompts and injections.

    python -m rsp.integrations.lm_eval_samples --arm temperature=runs/plain/.../samples_rsp_arith_*.jsonl \
        --arm rsp=runs/rsp/.../samples_rsp_arith_*.jsonl --model smollm2-135m-instruct --out runs/from-lm-eval

Limits: lm-eval logs text, not token ids, so `token_ids` are the completion re-tokenised
(`token_ids_source: "retokenised"`); the prompts `rsp analyze` rebuilds equal lm-eval's only for
`--apply_chat_template` runs of the `rsp_*` tasks without few-shot examples or a system instruction.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from rsp.config import RSPArgumentParser, option
from rsp.evaluation import EvalConfig
from rsp.models.loading import resolve_model_dir
from rsp.records import SAMPLES, SampleRecord, append_samples
from rsp.renamed import renamed_key
from rsp.runio import atomic_write_text, prepare_run_dir
from rsp.tasks.grading import Grader
from rsp.tasks.registry import load_task

SEED_LOG_KEY = "rsp_seeds"  # rsp.integrations.lm_eval's (repeated so that this module needs no lm_eval)


def read_samples(path: str | Path) -> list[dict]:
    """The JSON lines of an lm-eval samples file (lm-eval's format, not rsp's `rsp.records.read_samples`)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _argument_lists(arguments: Any) -> list[list]:
    """lm-eval logs `arguments` either as a list of tuples or as {"gen_args_0": {"arg_0": ...}, ...}."""
    if isinstance(arguments, dict):
        return [
            [v[k] for k in sorted(v, key=lambda k: int(k.split("_")[-1]))] if isinstance(v, dict) else [v]
            for _, v in sorted(arguments.items(), key=lambda kv: int(kv[0].split("_")[-1]))
        ]
    return [list(a) if isinstance(a, list | tuple) else [a] for a in arguments or []]


def rsp_info(sample: dict) -> dict | None:
    """The `{"rsp_seeds": [...], ...}` dict rsp-hf appended to the sample's (first) request, if any."""
    for args in _argument_lists(sample.get("arguments")):
        if args and isinstance(args[-1], dict) and SEED_LOG_KEY in args[-1]:
            return args[-1]
    return None


def sample_seeds(sample: dict) -> list[int | None]:
    """One RSP seed per repeat, in the order of `resps` (None for each repeat of an uninjected run)."""
    info, n = rsp_info(sample), len(sample_completions(sample))
    seeds = [None] * n if info is None else list(info[SEED_LOG_KEY])
    if len(seeds) != n:
        raise ValueError(f"doc {sample.get('doc_id')}: {n} completions but {len(seeds)} RSP seeds")
    return seeds


def sample_completions(sample: dict) -> list[str]:
    """The repeats' raw completions of a generation sample (`resps` of its one request)."""
    resps = sample.get("resps") or []
    if len(resps) != 1:
        doc = sample.get("doc_id")
        raise ValueError(f"doc {doc}: expected one generation request per doc, got {len(resps)}")
    return [str(r) for r in resps[0]]


def to_records(samples: Sequence[dict], method: str, *, grader, tokenizer=None) -> list[SampleRecord]:
    """rsp eval records (one per repeat) from the samples of one lm-eval run of an `rsp_*` task."""
    records: list[SampleRecord] = []
    for sample in samples:
        doc = sample.get("doc") or {}
        if "rsp_problem_id" not in doc:
            why = "only the shipped rsp_* tasks convert"
            raise ValueError(f"doc {sample.get('doc_id')} has no rsp_problem_id: {why}")
        gold = str(doc["answer"])
        completions = sample_completions(sample)
        for attempt, (text, seed) in enumerate(zip(completions, sample_seeds(sample), strict=True)):
            grade = grader.grade(text, gold)
            ids = [] if tokenizer is None else list(tokenizer(text, add_special_tokens=False)["input_ids"])
            records.append(
                {
                    "problem_id": str(doc["rsp_problem_id"]),
                    "method": method,
                    "attempt": attempt,
                    "rsp_seed": seed,
                    "decode_seed": None,
                    "prompt_hash": sample.get("prompt_hash"),
                    "completion": text,
                    "token_ids": ids,
                    "num_tokens": len(ids),
                    "token_ids_source": "retokenised",
                    "finish_reason": None,
                    "extracted": grade.extracted,
                    "gold": gold,
                    "correct": grade.correct,
                    "grade_method": grade.method,
                }
            )
    return records


def _injection_settings(arms: dict[str, list[dict]]) -> dict:
    """The injection settings every injected arm must share (rsp_length, rsp_position, rsp_scale, seed)."""
    found: dict[str, set] = {}
    for method, samples in arms.items():
        info = next((rsp_info(s) for s in samples if rsp_info(s)), None)
        if info is None:
            continue
        old = [str(renamed_key(k, "seed log key")) for k in ("rsp_method", "rsp_seed") if k in info]
        if old:
            raise ValueError(f"arm {method!r}: its seed log predates a rename: {'; '.join(old)}")
        if info.get("method") not in (None, method):
            raise ValueError(f"arm {method!r} was run with method={info['method']}: name the arm after it")
        for key in ("rsp_length", "rsp_position", "rsp_scale", "seed"):
            found.setdefault(key, set()).add(info.get(key))
    for key, values in found.items():
        if len(values) > 1:
            differ = f"the injected arms differ in {key} ({sorted(map(str, values))})"
            raise ValueError(f"{differ}; convert them separately")
    return {k: next(iter(v)) for k, v in found.items()}


def convert(
    arms: dict[str, str | Path],
    out: str | Path,
    *,
    model: str,
    task: str = "arith",
    arith_steps: int = 1,
    arith_max_value: int = 10,
    retokenise: bool = True,
) -> Path:
    """Write `out/config.json` and `out/samples.jsonl` (rsp eval's format) from one samples file per method.
    The config's `seed` is 0, the one `rsp_arith` generates its problems with; each record carries its own
    RSP seed, all `rsp analyze` rebuilds RSPs from.
    """
    loaded = {m: read_samples(p) for m, p in arms.items()}
    inj = _injection_settings(loaded)
    first = next(iter(loaded.values()))
    n = len(sample_completions(first[0])) if first else 0
    gen = _generation_kwargs(first[0]) if first else {}
    pids = {str(s["doc"]["rsp_problem_id"]) for samples in loaded.values() for s in samples}
    task_problems = load_task(task, arith_steps=arith_steps, arith_max_value=arith_max_value, arith_n=1000)
    all_problems = [p.id for p in task_problems.problems]
    missing = sorted(pids - set(all_problems))
    if missing:
        raise ValueError(f"problem ids {missing[:3]} are not in rsp's {task!r} task with these settings")
    limit = max(all_problems.index(p) for p in pids) + 1
    cfg = EvalConfig(
        model=model,
        task=task,
        limit=limit,
        arith_steps=arith_steps,
        arith_max_value=arith_max_value,
        n=n,
        methods=tuple(loaded),
        rsp_length=int(inj.get("rsp_length", 4)),
        rsp_scale=float(inj.get("rsp_scale", 1.0)),
        rsp_position=str(inj.get("rsp_position", "after_generation_prompt")),
        seed=0,
        temperature=float(gen.get("temperature", 0.0)) if gen.get("do_sample", True) else 0.0,
        max_new_tokens=int(gen.get("max_gen_toks", 256)),
        prompt_style="chat",
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(model)[0]) if retokenise else None
    out = Path(out)
    prepare_run_dir(out, cfg.to_dict(), kind="eval")
    if (out / SAMPLES).exists():
        raise ValueError(f"{out}/{SAMPLES} exists already; convert into a new directory")
    with Grader() as grader:
        for method, samples in loaded.items():
            append_samples(out / SAMPLES, to_records(samples, method, grader=grader, tokenizer=tokenizer))
    atomic_write_text(
        out / "SOURCE.md",
        "Converted from lm-eval samples by rsp.integrations.lm_eval_samples:\n\n"
        + "".join(f"- `{m}`: `{p}`\n" for m, p in arms.items()),
    )
    return out


def _generation_kwargs(sample: dict) -> dict:
    for args in _argument_lists(sample.get("arguments")):
        if len(args) > 1 and isinstance(args[1], dict):
            return args[1]
    return {}


@dataclass
class ConvertConfig:
    """The flags of `python -m rsp.integrations.lm_eval_samples`."""

    arm: list[str] = option(
        help="METHOD=SAMPLES.jsonl; the first is the baseline of rsp report's paired differences",
        metavar="METHOD=SAMPLES.jsonl",
        comma=False,
    )
    model: str = option(help="the model the samples came from (rsp spec: name, dir, .gguf)")
    out: str = option(help="the rsp eval run directory to write")
    task: str = option("arith", "the rsp task the rsp_* lm-eval task wraps (arith, gsm8k, math500)")
    arith_steps: int = option(1, "synthetic task: operations per problem")
    arith_max_value: int = option(10, "synthetic task: size of numbers")
    retokenise: bool = option(True, "token_ids from the completions (--no-retokenise: empty, no tokenizer)")


def main(argv: list[str] | None = None) -> int:
    parser = RSPArgumentParser([ConvertConfig], prog="python -m rsp.integrations.lm_eval_samples")
    (cfg,) = parser.parse(argv)
    arms = {}
    for spec in cfg.arm:
        method, sep, path = spec.partition("=")
        if not sep or not method or not path:
            parser.error(f"--arm expects METHOD=SAMPLES.jsonl, got {spec!r}")
        arms[method] = path
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("arm", "out")}  # convert()'s
    try:
        out = convert(arms, cfg.out, **options)
    except (ValueError, OSError) as exc:
        print(f"lm_eval_samples: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}/samples.jsonl; now: rsp report --run {out}   (or rsp analyze --run {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
