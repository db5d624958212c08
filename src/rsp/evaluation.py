"""`rsp eval`: N attempts per problem per method, graded, written as they finish, summarised.

Work is cut into fixed batches whose composition and decoding seed depend only on the configuration, so
a resumed run regenerates exactly what an uninterrupted run would have, and skips what is on disk.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import ClassVar, get_args

from tqdm.auto import tqdm

from rsp.config import option, require, require_choice, require_min
from rsp.core.insert import PromptTokens
from rsp.engines.args import PARALLEL_SIZES, EngineArgs
from rsp.engines.base import SamplingConfig
from rsp.generation import Generator, plan_batches
from rsp.methods import InjectionArgs, method_names
from rsp.models.loading import ModelBase
from rsp.records import SAMPLES, SampleRecord, append_samples, read_samples
from rsp.renamed import renamed_key, renamed_method
from rsp.runio import RunDirError, prepare_run_dir, read_run_config
from rsp.tasks.base import Task
from rsp.tasks.grading import Grader
from rsp.tasks.prompts import PromptBuilder, PromptStyle
from rsp.tasks.registry import load_task

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An evaluation setting is out of range or inconsistent; the message names it."""


PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)
_TASK, _INJECTION, _SAMPLING = "task", "injection", "sampling"


@dataclass
class EvalConfig(InjectionArgs, EngineArgs):
    """Everything that determines an evaluation's results (saved with the run and checked on resume);
    each field is a flag of `rsp eval`, `rsp sweep` and `rsp analyze`."""

    _group_titles: ClassVar[dict[str, str]] = {g: g for g in ("model", _TASK, _SAMPLING, _INJECTION)}

    task: str = option(
        "arith",
        "arith, gsm8k, math500, aime24, aime25, amc23, minerva, olympiadbench, a .jsonl path, or hf:org/name",
        group=_TASK,
    )
    split: str = option("test", "the task's split", group=_TASK)
    limit: int | None = option(40, "number of problems (null in a config file: all)", group=_TASK)
    arith_steps: int = option(1, "synthetic task: operations per problem", group=_TASK)
    arith_max_value: int = option(10, "synthetic task: size of numbers", group=_TASK)
    prompt_style: str = option(
        "auto", "chat template, plain few-shot text, or auto", choices=PROMPT_STYLES, group=_TASK
    )
    n: int = option(16, "attempts per problem", group=_SAMPLING)
    methods: tuple[str, ...] = option(
        default_factory=lambda: ("temperature", "rsp"),
        help="the methods compared, one arm each (see `rsp methods`)",
        group=_INJECTION,
    )
    temperature: float = option(0.7, "0 = greedy", group=_SAMPLING)
    top_p: float = option(1.0, "nucleus sampling (1 = off)", group=_SAMPLING)
    top_k: int = option(0, "top-k sampling (0 = off)", group=_SAMPLING)
    min_p: float = option(0.0, "min-p sampling (0 = off)", group=_SAMPLING)
    max_new_tokens: int = option(128, "tokens generated per attempt at most", group=_SAMPLING)
    batch_size: int = option(32, "attempts per engine batch", group=_SAMPLING)
    seed: int = option(0, "the run's base seed (every RSP and decode seed derives from it)", group=_SAMPLING)
    common_random_numbers: bool = option(
        True,
        "common random numbers: every method's batch of the same problems decodes with the same seed "
        "(derived without the method name), so paired comparisons do not carry independent sampling noise; "
        "a run saved without this setting (made before it existed) resumes with it off",
        group=_SAMPLING,
    )
    grader_timeout: float = option(5.0, "seconds per answer check", group=_SAMPLING)

    def validate(self) -> None:
        need = partial(require, error=ConfigError)
        require_min(self, 1, "n", "batch_size", "limit", error=ConfigError)
        require_min(self, 0, "temperature", error=ConfigError)
        require_min(self, 0, "grader_timeout", error=ConfigError, strict=True)
        self.validate_injection(ConfigError)
        self.validate_engine(ConfigError)
        require_choice(self.prompt_style, "prompt_style", PROMPT_STYLES, ConfigError)
        need(bool(self.methods), "methods", "must name at least one method")
        distinct = len(set(self.methods)) == len(self.methods)
        need(distinct, "methods", f"lists a method twice: {','.join(self.methods)}")
        known = method_names()
        for m in self.methods:
            unknown = renamed_method(m) or f"names an unknown method {m!r}; known methods: {', '.join(known)}"
            need(m in known, "methods", unknown)
        try:
            self.sampling().validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.min_p, self.max_new_tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        for key in PARALLEL_SIZES:  # absent at 1, so older runs still resume
            if d[key] == 1:
                del d[key]
        if not d["common_random_numbers"]:  # absent means off, as in every run made before it
            del d["common_random_numbers"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        """From a saved run's config."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            renamed = [r for r in map(renamed_key, unknown) if r]
            raise ConfigError("; ".join(renamed) or f"unknown eval setting(s): {', '.join(unknown)}")
        d = dict(d)
        if "methods" in d:
            d["methods"] = tuple(d["methods"])
        d.setdefault("common_random_numbers", False)  # saved before it existed: decode seeds named the method
        return cls(**d)

    def load_task(self) -> Task:
        """The run's problems: the first `limit` of the task."""
        arith = {k: getattr(self, k) for k in ("arith_steps", "arith_max_value")}
        return load_task(self.task, split=self.split, limit=self.limit, seed=self.seed, **arith)


def keep_saved_seed_scheme(out: Path, config: EvalConfig) -> EvalConfig:
    """`config`, with common random numbers off when `out` holds a run saved before that setting existed:
    such a run derived every decode seed from the method name, and its config.json lacks the key, which
    `EvalConfig.to_dict` also leaves out when the setting is off, so the settings compare equal."""
    try:
        saved = read_run_config(out, kind="eval")
    except RunDirError:
        return config  # no run there yet (or not an eval run: prepare_run_dir says so)
    if "common_random_numbers" in saved.config or not config.common_random_numbers:
        return config
    log.info("%s was made before common random numbers existed: resuming it with them off", out)
    return replace(config, common_random_numbers=False)


def prompt_hash(prompt: PromptTokens) -> str:
    return hashlib.sha256(",".join(map(str, prompt.ids)).encode()).hexdigest()[:16]


@dataclass
class EvalRun:
    out: Path
    config: EvalConfig
    records: list[SampleRecord]
    task: Task
    seconds: float
    oom_events: list[str]


def run_eval(
    config: EvalConfig,
    out: str | Path,
    *,
    lm: ModelBase | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    generator: Generator | None = None,
) -> EvalRun:
    """Run (or resume) an evaluation into `out` (`max_batches` stops early, for tests), through
    `Generator.run_batches`, as `rsp.generate`; `generator` reuses a loaded model and engine (`rsp sweep`)."""
    config.validate()
    out = Path(out)
    task = config.load_task()
    config = keep_saved_seed_scheme(out, config)
    resumed = prepare_run_dir(out, config.to_dict(), kind="eval")
    samples_path = out / SAMPLES
    existing = read_samples(samples_path, repair=True)
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
            generator = Generator.from_args(config, lm)
        elif generator.engine_name != config.engine:
            why = f"the generator runs the {generator.engine_name} engine"
            raise ConfigError(f"{why} but the run asks for --engine {config.engine}")
        builder = PromptBuilder.for_task(generator.tokenizer, task, style=config.prompt_style)  # type: ignore[arg-type]
        prompts = [builder.build(p) for p in task.problems]
        injections = {m: generator.injection(config.rsp_config(m)) for m in config.methods}
        # each method's own length: a soft prompt file fixes L, not --rsp-length
        method, longest = max(injections.items(), key=lambda kv: kv[1].length)
        try:
            generator.check_context(prompts, longest, config.max_new_tokens)
        except ValueError as exc:
            raise ConfigError(f"{exc} ({method}); lower --max-new-tokens or the injection length") from None
        desc = f"eval {out.name}"
        bar = tqdm(total=total, initial=len(done), disable=not progress, unit="attempt", desc=desc)
        with Grader(timeout=config.grader_timeout) as grader:
            for batch, decode_seed, seeds, completions in generator.run_batches(
                todo,
                prompts,
                [p.id for p in task.problems],
                injections,
                config.sampling(),
                seed=config.seed,
                stop=builder.stop_strings,
                common_random_numbers=config.common_random_numbers,
            ):
                new: list[SampleRecord] = []
                for (p, a), rsp_seed, comp in zip(batch.rows, seeds, completions, strict=True):
                    problem = task.problems[p]
                    if (problem.id, batch.method, a) in done:
                        continue
                    grade = grader.grade(comp.text, problem.answer)
                    record = SampleRecord(
                        problem_id=problem.id,
                        method=batch.method,
                        attempt=a,
                        rsp_seed=rsp_seed,
                        decode_seed=decode_seed,
                        prompt_hash=prompt_hash(prompts[p]),
                        completion=comp.text,
                        token_ids=list(comp.token_ids),
                        num_tokens=len(comp.token_ids),
                        finish_reason=comp.finish_reason,
                        extracted=grade.extracted,
                        gold=problem.answer,
                        correct=grade.correct,
                        grade_method=grade.method,
                    )
                    new.append(record)
                append_samples(samples_path, new)
                done.update((r["problem_id"], r["method"], r["attempt"]) for r in new)
                existing.extend(new)
                bar.update(len(new))
        bar.close()
        oom_events = list(generator.engine.oom_events)
    return EvalRun(out, config, existing, task, time.time() - t0, oom_events)
