"""`rsp eval`: N attempts per problem per method, graded, written as they finish, summarised.

Work is cut into fixed batches (method x problem group x chunk) whose composition and decoding
seed depend only on the configuration, so a resumed run regenerates exactly what an uninterrupted
run would have, and skips every batch already on disk.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tqdm.auto import tqdm

from rsp.core.injection import Injection
from rsp.core.insert import INSERTION_POINTS, PromptTokens
from rsp.engines import ENGINE_NAMES
from rsp.engines.base import SamplingConfig
from rsp.generation import Generator, RSPConfig, decode_seed_for, plan_batches
from rsp.methods import method_names
from rsp.models.loading import LoadedModel
from rsp.runio import JsonlAppender, prepare_run_dir, read_jsonl_records
from rsp.tasks.base import Problem, Task
from rsp.tasks.grading import Grader
from rsp.tasks.prompts import PromptBuilder
from rsp.tasks.registry import load_task

log = logging.getLogger(__name__)
SAMPLES = "samples.jsonl"


class ConfigError(ValueError):
    """An evaluation setting is out of range or inconsistent; the message names it."""


@dataclass
class EvalConfig:
    """Everything that determines an evaluation's results (saved with the run and checked on resume)."""

    model: str = "smollm2-135m-instruct"
    task: str = "arith"
    split: str = "test"
    limit: int | None = 40
    arith_steps: int = 1
    arith_max_value: int = 10
    n: int = 16
    methods: tuple[str, ...] = ("temperature", "rsp")
    rsp_length: int = 4
    rsp_scale: float = 1.0
    position: str = "after_generation_prompt"
    stats_rows: str = "all"
    stats_mean: str = "scalar"
    method_extra: dict = field(default_factory=dict)
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 128
    batch_size: int = 32
    seed: int = 0
    prompt_style: str = "auto"
    dtype: str = "auto"
    device: str = "cpu"
    engine: str = "hf"
    tensor_parallel_size: int = 1  # vllm engine only
    data_parallel_size: int = 1  # vllm engine only
    grader_timeout: float = 5.0

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1 (attempts per problem), got {self.n}")
        if self.rsp_length < 0:
            raise ConfigError(f"--rsp-length must be >= 0, got {self.rsp_length}")
        if self.rsp_scale < 0:
            raise ConfigError(f"--rsp-scale must be >= 0, got {self.rsp_scale}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.grader_timeout <= 0:
            raise ConfigError(f"--grader-timeout must be > 0, got {self.grader_timeout}")
        if self.position not in INSERTION_POINTS:
            raise ConfigError(
                f"--position must be one of {', '.join(INSERTION_POINTS)}, got {self.position!r}"
            )
        if self.engine not in ENGINE_NAMES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINE_NAMES)}, got {self.engine!r}")
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ConfigError("--tensor-parallel-size and --data-parallel-size must be >= 1")
        if self.engine != "vllm" and (self.tensor_parallel_size, self.data_parallel_size) != (1, 1):
            raise ConfigError("--tensor-parallel-size / --data-parallel-size apply to --engine vllm only")
        if not self.methods:
            raise ConfigError("--methods must name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods lists a method twice: {','.join(self.methods)}")
        known = method_names()
        for m in self.methods:
            if m not in known:
                raise ConfigError(f"unknown method {m!r}; known methods: {', '.join(known)}")
        try:
            self.sampling().validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.min_p, self.max_new_tokens)

    def rsp_config(self, method: str) -> RSPConfig:
        """What `method` injects under this run's settings (the front door's `RSPConfig`)."""
        return RSPConfig(
            length=self.rsp_length,
            scale=self.rsp_scale,
            position=self.position,
            method=method,
            stats_rows=self.stats_rows,
            stats_mean=self.stats_mean,
            options=dict(self.method_extra),
        )

    def engine_options(self) -> dict:
        """Options for `create_engine` beyond the engine name (vLLM's parallelism)."""
        if self.engine != "vllm":
            return {}
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "data_parallel_size": self.data_parallel_size,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        for key in ("tensor_parallel_size", "data_parallel_size"):  # absent at 1, so older runs still resume
            if d[key] == 1:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown eval setting(s): {', '.join(sorted(unknown))}")
        d = dict(d)
        if "methods" in d:
            d["methods"] = tuple(d["methods"])
        return cls(**d)

    def load_task(self) -> Task:
        return load_task(
            self.task,
            split=self.split,
            limit=self.limit,
            arith_steps=self.arith_steps,
            arith_max_value=self.arith_max_value,
            seed=self.seed,
        )


def prompt_hash(prompt: PromptTokens) -> str:
    return hashlib.sha256(",".join(map(str, prompt.ids)).encode()).hexdigest()[:16]


@dataclass
class EvalRun:
    out: Path
    config: EvalConfig
    records: list[dict]
    task: Task
    seconds: float
    oom_events: list[str]


def run_eval(
    config: EvalConfig,
    out: str | Path,
    *,
    lm: LoadedModel | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    generator: Generator | None = None,
) -> EvalRun:
    """Run (or resume) an evaluation into `out`. `max_batches` stops early (used by tests).

    Every batch is one `Generator.run` call, the step `rsp.generate` is made of, with the same seeds;
    pass `generator` to reuse a loaded model and engine across runs (`rsp sweep` does).
    """
    config.validate()
    out = Path(out)
    task = config.load_task()
    resumed = prepare_run_dir(out, config.to_dict(), kind="eval")
    samples_path = out / SAMPLES
    existing = read_jsonl_records(samples_path)
    done = {(r["problem_id"], r["method"], r["attempt"]) for r in existing}
    total = len(task.problems) * config.n * len(config.methods)
    if resumed:
        log.info("resuming %s: %d of %d attempts already done", out, len(done), total)
    batches = plan_batches(len(task.problems), config.n, tuple(config.methods), config.batch_size)
    todo = [b for b in batches if any((task.problems[p].id, b.method, a) not in done for p, a in b.rows)]
    if max_batches is not None:
        todo = todo[:max_batches]
    t0 = time.time()
    oom_events: list[str] = []
    if todo:
        if generator is None:
            generator = Generator(
                lm if lm is not None else config.model,
                engine=config.engine,
                dtype=config.dtype,
                device=config.device,
                **config.engine_options(),
            )
        elif generator.engine_name != config.engine:
            raise ConfigError(
                f"the generator runs the {generator.engine_name} engine but the run asks for "
                f"--engine {config.engine}"
            )
        lm = generator.lm
        builder = PromptBuilder.for_task(lm.tokenizer, task, style=config.prompt_style)  # type: ignore[arg-type]
        prompts = [builder.build(p) for p in task.problems]
        injections = {m: generator.injection(config.rsp_config(m)) for m in config.methods}
        _check_context(generator, prompts, config, injections)
        appender = JsonlAppender(samples_path)
        sampling = config.sampling()
        bar = tqdm(
            total=total, initial=len(done), disable=not progress, unit="attempt", desc=f"eval {out.name}"
        )
        with Grader(timeout=config.grader_timeout) as grader:
            for batch in todo:
                injection = injections[batch.method]
                problems = [task.problems[p] for p, _ in batch.rows]
                seeds = [injection.seed_for(config.seed, task.problems[p].id, a) for p, a in batch.rows]
                decode_seed = decode_seed_for(config.seed, batch)
                completions = generator.run(
                    [prompts[p] for p, _ in batch.rows],
                    injection,
                    seeds,
                    sampling,
                    decode_seed=decode_seed,
                    stop_strings=builder.stop_strings,
                )
                new = []
                for (p, a), problem, seed, comp in zip(batch.rows, problems, seeds, completions, strict=True):
                    if (problem.id, batch.method, a) in done:
                        continue
                    new.append(_record(problem, batch.method, a, seed, decode_seed, prompts[p], comp, grader))
                appender.append(new)
                done.update((r["problem_id"], r["method"], r["attempt"]) for r in new)
                existing.extend(new)
                bar.update(len(new))
        bar.close()
        oom_events = list(generator.engine.oom_events)
    return EvalRun(out, config, existing, task, time.time() - t0, oom_events)


def _check_context(
    generator: Generator, prompts: list[PromptTokens], config: EvalConfig, injections: dict[str, Injection]
) -> None:
    """Fail before sampling, using each method's own length (a soft prompt file fixes L, not --rsp-length)."""
    method, injection = max(injections.items(), key=lambda kv: kv[1].length)
    try:
        generator.check_context(prompts, injection, config.max_new_tokens)
    except ValueError as exc:
        raise ConfigError(f"{exc} ({method}); lower --max-new-tokens or the injection length") from None


def _record(
    problem: Problem,
    method: str,
    attempt: int,
    seed: int | None,
    decode_seed: int,
    prompt: PromptTokens,
    comp,
    grader: Grader,
) -> dict:
    grade = grader.grade(comp.text, problem.answer)
    return {
        "problem_id": problem.id,
        "method": method,
        "attempt": attempt,
        "rsp_seed": seed,
        "decode_seed": decode_seed,
        "prompt_hash": prompt_hash(prompt),
        "completion": comp.text,
        "token_ids": list(comp.token_ids),
        "num_tokens": len(comp.token_ids),
        "finish_reason": comp.finish_reason,
        "extracted": grade.extracted,
        "gold": problem.answer,
        "correct": grade.correct,
        "grade_method": grade.method,
    }
