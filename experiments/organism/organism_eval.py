"""Measure a checkpoint with the real `rsp eval` CLI, then summarise its samples.jsonl.

Why through the CLI and not an in-process call: the organism is meant to be studied with `rsp eval` /
`rsp sweep`, so its competence is measured on exactly the prompts, sampler, stop tokens and grader those
commands use. The summary adds what the narrowing questions need: pass@1 and pass@k with bootstrap
intervals over problems, the cut rate (attempts that hit `--max-new-tokens`), distinct answers per problem,
the entropy of each problem's empirical answer distribution, and the first-token entropy of the model's
next-token distribution at the start of the answer (one forward pass per problem, no sampling).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from rsp.metrics import bootstrap_ci, pass_at_k

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EvalSpec:
    arith_steps: int
    limit: int = 32
    n: int = 8
    temperature: float = 0.7
    max_new_tokens: int = 128
    max_value: int = 20
    seed: int = 0
    engine: str = "prefix"
    dtype: str = "float32"  # the checkpoint's own dtype; bf16 is emulated (about 4x slower) on AVX2 CPUs

    def tag(self) -> str:
        return f"s{self.arith_steps}-m{self.max_value}-p{self.limit}-n{self.n}-t{self.temperature}"


def rsp_eval_argv(model: str, spec: EvalSpec, out: Path) -> list[str]:
    """The `rsp eval` command line (plain temperature sampling, held-out test split)."""
    return [
        "rsp", "eval", "--model", model, "--task", "arith", "--split", "test",
        "--arith-steps", str(spec.arith_steps), "--arith-max-value", str(spec.max_value),
        "--limit", str(spec.limit), "--n", str(spec.n), "--methods", "temperature",
        "--temperature", str(spec.temperature), "--max-new-tokens", str(spec.max_new_tokens),
        "--engine", spec.engine, "--dtype", spec.dtype, "--seed", str(spec.seed), "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def run_rsp_eval(model: str, spec: EvalSpec, out: Path) -> list[str]:
    argv = rsp_eval_argv(model, spec, out)
    exe = Path(sys.executable).with_name("rsp")
    subprocess.run([str(exe), *argv[1:]], check=True, env=os.environ.copy(), cwd=ROOT)
    return argv


def summarise(samples: list[dict], *, max_new_tokens: int, ks: tuple[int, ...] = (1, 4, 8, 32)) -> dict:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for r in samples:
        by_problem[r["problem_id"]].append(r)
    n = min(len(v) for v in by_problem.values())
    out: dict = {"problems": len(by_problem), "attempts_per_problem": n}
    for k in ks:
        if k <= n:
            vals = [pass_at_k(len(v), sum(r["correct"] for r in v), k) for v in by_problem.values()]
            out[f"pass@{k}"] = bootstrap_ci(vals).to_dict()
    cut = [sum(r["num_tokens"] >= max_new_tokens for r in v) / len(v) for v in by_problem.values()]
    out["cut_rate"] = bootstrap_ci(cut).to_dict()
    distinct = [len({r["extracted"] for r in v if r["extracted"] is not None}) for v in by_problem.values()]
    out["distinct_answers"] = bootstrap_ci(distinct).to_dict()
    out["answer_entropy_nats"] = bootstrap_ci([_answer_entropy(v) for v in by_problem.values()]).to_dict()
    out["no_answer_rate"] = sum(r["extracted"] is None for r in samples) / len(samples)
    out["mean_tokens"] = sum(r["num_tokens"] for r in samples) / len(samples)
    return out


def _answer_entropy(rows: list[dict]) -> float:
    """Entropy (nats) of a problem's answers across attempts; 'no answer' counts as one outcome."""
    counts = Counter(str(r["extracted"]) for r in rows)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def first_token_entropy(model: str, spec: EvalSpec) -> dict:
    """Entropy (nats) of the next-token distribution at the first answer position, at T=1 and at the
    eval temperature, mean over the spec's problems with a bootstrap interval (fp32, no injection)."""
    from rsp.models import load_model
    from rsp.tasks import PromptBuilder, load_task

    lm = load_model(model, dtype="float32")
    task = load_task(
        "arith", split="test", arith_steps=spec.arith_steps, arith_max_value=spec.max_value,
        limit=spec.limit, seed=spec.seed,
    )  # fmt: skip
    builder = PromptBuilder.for_task(lm.tokenizer, task, style="auto")
    h1: list[float] = []
    ht: list[float] = []
    with torch.no_grad():
        for p in task.problems:
            ids = torch.tensor([builder.build(p).ids])
            logits = lm.model(input_ids=ids).logits[0, -1].float()
            for temp, acc in ((1.0, h1), (spec.temperature, ht)):
                logp = torch.log_softmax(logits / temp, -1)
                acc.append(float(-(logp.exp() * logp).sum()))
    return {"T=1": bootstrap_ci(h1).to_dict(), f"T={spec.temperature}": bootstrap_ci(ht).to_dict()}


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown_row(name: str, spec: EvalSpec, m: dict) -> str:
    def f(key: str) -> str:
        e = m.get(key)
        return f"{e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" if e else "-"

    ent = m.get("first_token_entropy", {}).get("T=1")
    ent_s = f"{ent['mean']:.3f}" if ent else "-"
    return (
        f"| {name} | {spec.arith_steps} | {m['problems']}x{m['attempts_per_problem']} | {f('pass@1')} | "
        f"{f('pass@8')} | {f('cut_rate')} | {f('distinct_answers')} | {f('answer_entropy_nats')} | {ent_s} |"
    )


MD_HEADER = (
    "| checkpoint | steps | problems x attempts | pass@1 | pass@8 | cut rate | distinct answers / problem "
    "| answer entropy (nats) | first-token entropy T=1 (nats) |\n|---|---|---|---|---|---|---|---|---|"
)
