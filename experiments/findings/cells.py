"""The map's cells, defined once: every run is an `rsp eval` command line, listed in the order it should run.

Why one list in Python: `experiments/findings.sh` executes exactly these command lines (it asks
`python -m experiments.findings commands` for them), `docs/findings.md` prints them, the report reads the run
directories they name, and a test checks that the three agree. Changing a setting here changes all of
them at once, and a run directory that already holds a different setting refuses to resume
(`rsp eval` compares its saved config), so the map cannot silently mix settings.

Design choices, fixed before any of these runs existed:

* Each run evaluates one method. The temperature-only run at a (model, difficulty, temperature) is the
  shared baseline of every RSP variant and control at that temperature; pairs are matched by problem
  id (same seed, same problems). A method's attempts do not depend on which other methods share its
  run (decode seeds are derived from the method name, problem group and chunk), so splitting methods
  into runs changes no attempt and saves one baseline per variant.
* Greedy decoding with an injection that is the same for every attempt (temperature-only, one RSP per
  problem, mean vector, trained soft prompt) gives N identical attempts, so those runs generate one
  attempt per problem and the analysis counts it N times, as `rsp sweep` does.
* Engine: `ENGINE`, one constant for every run (see its comment).
* GSM8K: only problems the model solves at least sometimes carry information about pass@k, so a
  screening run with a *different seed* (`SCREEN_SEED`) samples the test problems in file order,
  `SCREEN_ATTEMPTS` times with temperature-only and `SCREEN_ATTEMPTS` times with RSP (L=4, T=0.7;
  pooled, so the selection favours neither arm), and the first `N_PROBLEMS` problems (in file order)
  with at least one correct screening attempt become that model's GSM8K set. The screen goes on, shard
  by shard, until it has found them or has screened `SCREEN_MAX_PROBLEMS` (a model that solves one
  problem in eight needs about 256); the runner skips the shards after that point, which cannot change
  the choice. The evaluation
  itself then uses seed `SEED`, so selection and measurement share no random draw. The selected
  problems are written as `gsm8k_test.jsonl` (plus the two few-shot examples the plain prompt takes
  from the train split) into a data directory that the cells name through `RSP_DATA_DIR`. The screen
  is made in shards of `SCREEN_SHARD_PROBLEMS` problems, each recorded (per-problem correct attempts
  per arm) in the committed ledger when it finishes; the selection is made from those records.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from rsp.methods import method_specs

ROOT = "runs/findings"  # raw runs (git-ignored; gone in the next session's checkout)
LEDGER = "docs/findings/ledger"  # what of them is committed (experiments.findings.ledger)
TIMING = "docs/findings/timing.jsonl"  # one line per step invocation: wall and CPU time, new attempts
# lean: greedy-identical to hf on the real models in bf16, about 1.2x faster on a CPU (docs/performance.md);
# prefix would save prefill on long prompts but falls back to lean on Gemma 3 (sliding window).
ENGINE = "lean"
N_PROBLEMS = 32
N_ATTEMPTS = 32
# A sampled run is made in shards of this many problems (`rsp eval --offset`; the attempts are the
# unsharded run's): a shard takes 4-25 minutes on one core, so a session that ends mid-map loses at
# most the shards in flight, while a whole run (1-3 hours on a CPU without native bf16) may never fit.
SHARD_PROBLEMS = 8
SEED = 0
SCREEN_SEED = 1
# The screen stops once N_PROBLEMS problems qualify; at most this many are screened (60 shards). It was
# a fixed 160 until SmolLM2's first shards showed about 1 problem in 8 qualifying: 160 would give ~20.
SCREEN_MAX_PROBLEMS = 480
SCREEN_ATTEMPTS = 8
# The offset from which each model's screen runs in FAST_DTYPE: SmolLM2's first 3 shards were made in
# bf16 before the switch; Gemma's screen had not started, so all of it is fp32 (bf16 would take ~4x as
# long here, and the screen only chooses problems: no cell measures it).
SCREEN_FP32_FROM = {"smollm2": 24, "gemma3": 0}
SCREEN_SHARD_PROBLEMS = 8  # the screen, too, is made in shards, each recorded when done
BASE_T = 0.7
BASE_L = 4
DEFAULT_POSITION = "after_generation_prompt"
TEMPERATURES = (0.0, 0.3, 0.7, 1.0)
LENGTHS = (1, 2, 4, 8, 16)
SCALES = (0.5, 1.0, 2.0)
POSITIONS = ("after_generation_prompt", "end_of_user_turn", "prepend")
CONTROLS = ("rsp-shared", "token-string", "mean-vector")
POSITION_TAG = {"after_generation_prompt": "agp", "end_of_user_turn": "eut", "prepend": "pre"}
# The runs of the first part of the map (the base pair, difficulty, temperature, the soft prompt) are
# in bf16 (`--dtype auto`). The rest (GSM8K, L, controls, position, scale, each against its own fp32
# base pair) are in fp32: on CPUs without native bf16, most of the machines the map has run on, bf16 is
# emulated and 3.5-4x slower per attempt than fp32 (benchmarks/cpu_dtype.py), and fp32 sampling agrees
# better across CPUs and engines (docs/performance.md). Every comparison is within one dtype; the base
# pair, made in both, shows how far the dtype moves the result.
FAST_DTYPE = "float32"
DTYPE_TAG = {"auto": "", "float32": "_fp32"}
SOFT_PROMPT_DIR = "soft-prompt-arith1-L4"
SOFT_PROMPT_BUDGET_S = 900  # --max-seconds of each soft-prompt training step


@dataclass(frozen=True)
class Model:
    key: str
    name: str  # packaged name for --model
    prompt_style: str
    label: str


@dataclass(frozen=True)
class Difficulty:
    key: str
    label: str
    task: str
    arith_steps: int | None
    arith_max_value: int | None
    max_new_tokens: int


MODELS = (
    Model("smollm2", "smollm2-135m-instruct", "auto", "SmolLM2-135M-Instruct (chat template)"),
    Model("gemma3", "gemma3-270m", "plain", "Gemma 3 270M base (plain few-shot prompt)"),
)
DIFFICULTIES = (
    Difficulty("arith1", "arithmetic, 1 step, numbers <= 10", "arith", 1, 10, 128),
    Difficulty("arith2", "arithmetic, 2 steps, numbers <= 20", "arith", 2, 20, 128),
    Difficulty("arith3", "arithmetic, 3 steps, numbers <= 20", "arith", 3, 20, 128),
    Difficulty("gsm8k", "GSM8K test problems solved at least once in screening", "gsm8k", None, None, 256),
)
MODEL_BY_KEY = {m.key: m for m in MODELS}
DIFFICULTY_BY_KEY = {d.key: d for d in DIFFICULTIES}


def _same_each_attempt() -> set[str]:
    """Methods whose injection is the same for every attempt at a problem (`per_attempt` False in the
    method registry): greedy decoding gives them N identical attempts."""
    return {m.name for m in method_specs() if not m.per_attempt}


def code_commit(code: Path | str = f"{ROOT}/code") -> str:
    """The commit of the frozen code in `code` (its COMMIT file, written by experiments/findings.sh when it
    extracts the map's code into runs/findings/code), or "unknown". The one reader of that file: the
    ledger, the screen records and the replication check all stamp or compare this commit."""
    path = Path(code) / "COMMIT"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else "unknown"


def data_dir(model: Model) -> str:
    """Where the selected GSM8K problems for `model` live (read by the cells through RSP_DATA_DIR)."""
    return f"{ROOT}/data/{model.key}"


def soft_prompt_file(model: Model) -> str:
    return f"{ROOT}/{model.key}/{SOFT_PROMPT_DIR}/soft_prompt.safetensors"


def soft_prompt_record(model: Model) -> str:
    """The committed copy of the trained vectors, as JSON text (`experiments.findings.tensorjson`; the
    repository holds no weight files): a soft prompt trained against a wall-clock budget differs from one
    machine to the next, so every session's soft-prompt shards must use this one."""
    return f"{LEDGER}/{model.key}/{SOFT_PROMPT_DIR}/soft_prompt.json"


TENSORJSON = "experiments/findings/tensorjson.py"  # run as a script by path: the steps' PYTHONPATH is frozen


def screen_dir(model: Model) -> str:
    return f"{ROOT}/{model.key}/gsm8k-screen"


def screen_shard_dir(model: Model, offset: int) -> str:
    return f"{screen_dir(model)}/shard-{offset:03d}"


def screen_records(model: Model) -> str:
    """Where each finished screen shard's per-problem counts are recorded (committed, like the ledger)."""
    return f"{LEDGER}/{model.key}/gsm8k/screen"


def screen_record(model: Model, offset: int) -> str:
    return f"{screen_records(model)}/shard-{offset:03d}.json"


def selection_file(model: Model) -> str:
    """The committed record of the model's GSM8K selection (ids and screening counts): with it, a later
    session rebuilds the data directory without screening again."""
    return f"{LEDGER}/{model.key}/gsm8k/selection.json"


def _model_args(model: Model) -> list[str]:
    args = ["--model", model.name, "--engine", ENGINE]
    if model.prompt_style != "auto":
        args += ["--prompt-style", model.prompt_style]
    return args


def _task_args(d: Difficulty) -> list[str]:
    args = ["--task", d.task]
    if d.arith_steps is not None:
        args += ["--arith-steps", str(d.arith_steps), "--arith-max-value", str(d.arith_max_value)]
    return args


@dataclass(frozen=True)
class Run:
    """One `rsp eval` run of one method: a point of the map, or the baseline that points are paired with."""

    model: Model
    difficulty: Difficulty
    method: str
    temperature: float
    length: int = BASE_L  # 0 for methods without injected slots of their own choosing
    scale: float = 1.0
    position: str = DEFAULT_POSITION
    offset: int | None = None  # a shard: problems offset .. offset + SHARD_PROBLEMS - 1 of the run
    dtype: str = "auto"  # --dtype: "auto" (bf16) or FAST_DTYPE (see its comment)

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0 and self.method in _same_each_attempt()

    @property
    def n(self) -> int:
        return 1 if self.deterministic else N_ATTEMPTS

    @property
    def name(self) -> str:
        dtype = DTYPE_TAG[self.dtype]
        if self.method in ("temperature", "soft-prompt"):  # no L / alpha / position of their own
            return f"{self.method}_T{self.temperature:g}{dtype}"
        tag = POSITION_TAG[self.position]
        return f"{self.method}_T{self.temperature:g}_L{self.length}_a{self.scale:g}_{tag}{dtype}"

    @property
    def out(self) -> str:
        whole = f"{ROOT}/{self.model.key}/{self.difficulty.key}/{self.name}"
        return whole if self.offset is None else f"{whole}/{self.shard_name}"

    @property
    def shard_name(self) -> str:
        return f"shard-{self.offset:02d}"

    @property
    def problems(self) -> int:
        return N_PROBLEMS if self.offset is None else SHARD_PROBLEMS

    def whole(self) -> Run:
        return replace(self, offset=None)

    def shards(self) -> list[Run]:
        """The shards the map makes this run in (none for a greedy run: one attempt per problem)."""
        if self.offset is not None or self.deterministic:
            return []
        return [replace(self, offset=o) for o in range(0, N_PROBLEMS, SHARD_PROBLEMS)]

    @property
    def is_baseline(self) -> bool:
        return self.method == "temperature"

    def baseline(self) -> Run:
        return Run(self.model, self.difficulty, "temperature", self.temperature, 0, dtype=self.dtype)

    def env(self) -> dict[str, str]:
        return {"RSP_DATA_DIR": data_dir(self.model)} if self.difficulty.task == "gsm8k" else {}

    def argv(self) -> list[str]:
        args = [
            "rsp",
            "eval",
            *_model_args(self.model),
            *(() if self.dtype == "auto" else ("--dtype", self.dtype)),
            *_task_args(self.difficulty),
            "--limit",
            str(self.problems),
            *(() if self.offset is None else ("--offset", str(self.offset))),
            "--n",
            str(self.n),
            "--methods",
            self.method,
            "--rsp-length",
            str(self.length),
            "--rsp-scale",
            f"{self.scale:g}",
            "--position",
            self.position,
            "--temperature",
            f"{self.temperature:g}",
            "--max-new-tokens",
            str(self.difficulty.max_new_tokens),
            "--batch-size",
            "32",
            "--seed",
            str(SEED),
        ]
        if self.method == "soft-prompt":
            args += ["--method-option", f"soft_prompt={soft_prompt_file(self.model)}"]
        return [*args, "--quiet", "--out", self.out]

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        return (env + " " if env else "") + shlex.join(self.argv())


@dataclass(frozen=True)
class Step:
    """One line of experiments/findings.sh: an eval run, or a preparation step (soft prompt, GSM8K screen)."""

    kind: str  # "eval" | "train-soft-prompt" | "screen" | "select"
    tier: str  # which part of the map it belongs to (the order of tiers is the run order)
    command: str
    run: Run | None = None
    outputs: tuple[str, ...] = field(default=())
    chain: str = ""  # steps sharing a non-empty chain depend on each other and run in order, by one worker
    done_if: tuple[str, ...] = ()  # files any of which makes the command a no-op (its `test -f ... ||`)
    model: str = ""  # the model key, for the steps without a run


def _pair(model: Model, d: Difficulty, t: float, dtype: str = "auto") -> list[Run]:
    return [Run(model, d, "temperature", t, 0, dtype=dtype), Run(model, d, "rsp", t, dtype=dtype)]


def _soft_prompt_step(model: Model) -> Step:
    out = str(Path(soft_prompt_file(model)).parent)
    train = [
        "rsp",
        "train-soft-prompt",
        "--model",
        model.name,
        "--length",
        str(BASE_L),
        "--position",
        DEFAULT_POSITION,
        "--data",
        "arith",
        "--arith-steps",
        "1",
        "--arith-max-value",
        "10",
        "--train-size",
        "256",
        "--val-size",
        "32",
        "--steps",
        "400",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--eval-every",
        "20",
        "--patience",
        "3",
        "--max-seconds",
        str(SOFT_PROMPT_BUDGET_S),
        "--seed",
        str(SEED),
        "--quiet",
    ]
    if model.prompt_style != "auto":
        train += ["--prompt-style", model.prompt_style]
    train += ["--out", out]
    file, saved = shlex.quote(soft_prompt_file(model)), shlex.quote(soft_prompt_record(model))
    # trained once: a later session restores the committed vectors instead of training others (and
    # fails, rather than retrains, if the record cannot be restored)
    command = (
        f"mkdir -p {shlex.quote(out)} && {{ test -f {file} || if test -f {saved}; then "
        f"python -P {TENSORJSON} restore {saved} {file}; else {shlex.join(train)}; fi; }}"
    )
    return Step(
        "train-soft-prompt",
        "control (soft-prompt)",
        command,
        None,
        (out, str(Path(soft_prompt_record(model)).parent)),
        f"soft-prompt-{model.key}",
        (soft_prompt_file(model), soft_prompt_record(model)),
        model.key,
    )


def _screen_steps(model: Model) -> list[Step]:
    """The screen's shards (each skipped once the selection or its own record exists), then the choice."""
    d = DIFFICULTY_BY_KEY["gsm8k"]
    chain = f"gsm8k-{model.key}"
    out: list[Step] = []
    for offset in range(0, SCREEN_MAX_PROBLEMS, SCREEN_SHARD_PROBLEMS):
        screen = [
            "rsp",
            "eval",
            *_model_args(model),
            *(() if offset < SCREEN_FP32_FROM[model.key] else ("--dtype", FAST_DTYPE)),
            *_task_args(d),
            "--limit",
            str(SCREEN_SHARD_PROBLEMS),
            "--offset",
            str(offset),
            "--n",
            str(SCREEN_ATTEMPTS),
            "--methods",
            "temperature,rsp",
            "--rsp-length",
            str(BASE_L),
            "--temperature",
            f"{BASE_T:g}",
            "--max-new-tokens",
            str(d.max_new_tokens),
            "--batch-size",
            "32",
            "--seed",
            str(SCREEN_SEED),
            "--quiet",
            "--out",
            screen_shard_dir(model, offset),
        ]
        guards = (selection_file(model), screen_record(model, offset))
        command = " || ".join([*(f"test -f {shlex.quote(g)}" for g in guards), shlex.join(screen)])
        out.append(
            Step(
                "screen",
                "difficulty (gsm8k)",
                command,
                None,
                (screen_shard_dir(model, offset), screen_record(model, offset)),
                chain,
                guards,
                model.key,
            )
        )
    select = [
        "python",
        "-m",
        "experiments.findings",
        "select-gsm8k",
        "--screen",
        screen_records(model),
        "--out",
        data_dir(model),
        "--limit",
        str(N_PROBLEMS),
        "--record",
        selection_file(model),
    ]
    out.append(
        Step(
            "select", "difficulty (gsm8k)", shlex.join(select), None, (data_dir(model),), chain, (), model.key
        )
    )
    return out


def steps() -> list[Step]:
    """Every step of the map, most informative first; a model's tier is run for SmolLM2, then Gemma."""
    arith1 = DIFFICULTY_BY_KEY["arith1"]
    tiers: list[tuple[str, object, str]] = []

    def add(tier: str, per_model, chain: str = "") -> None:
        for model in MODELS:
            for item in per_model(model):
                tiers.append((tier, item, f"{chain}-{model.key}" if chain else ""))

    add("base pair (arith 1 step, T=0.7, L=4)", lambda m: _pair(m, arith1, BASE_T))
    for key in ("arith2", "arith3"):
        add(f"difficulty ({key})", lambda m, key=key: _pair(m, DIFFICULTY_BY_KEY[key], BASE_T))
    for t in (0.0, 1.0, 0.3):
        add(f"temperature ({'greedy' if t == 0 else f'T={t:g}'})", lambda m, t=t: _pair(m, arith1, t))
    # the paper's claims before the derived questions: C3 (trained soft prompt), then C2 on GSM8K
    add(
        "control (soft-prompt)",
        lambda m: [_soft_prompt_step(m), Run(m, arith1, "soft-prompt", BASE_T, 0)],
        "soft-prompt",
    )
    fp32 = FAST_DTYPE
    # the rest in fp32 (see FAST_DTYPE): the base pair again, the base of every later cell
    add("base pair in fp32", lambda m: _pair(m, arith1, BASE_T, fp32))
    add(
        "difficulty (gsm8k)",
        lambda m: [*_screen_steps(m), *_pair(m, DIFFICULTY_BY_KEY["gsm8k"], BASE_T, fp32)],
        "gsm8k",
    )
    for L in (1, 16, 2, 8):
        add(f"length (L={L})", lambda m, L=L: [Run(m, arith1, "rsp", BASE_T, L, dtype=fp32)])
    for control in CONTROLS:
        add(f"control ({control})", lambda m, c=control: [Run(m, arith1, c, BASE_T, dtype=fp32)])
    for pos in POSITIONS[1:]:
        add(f"position ({pos})", lambda m, p=pos: [Run(m, arith1, "rsp", BASE_T, position=p, dtype=fp32)])
    for scale in (0.5, 2.0):
        add(f"scale ({scale:g})", lambda m, s=scale: [Run(m, arith1, "rsp", BASE_T, scale=s, dtype=fp32)])

    out: list[Step] = []
    for tier, item, chain in tiers:
        if isinstance(item, Step):
            out.append(item)
        else:
            assert isinstance(item, Run)
            for part in item.shards() or [item]:
                out.append(Step("eval", tier, part.shell(), part, (part.out,), chain))
    return out


def runs() -> list[Run]:
    """The map's eval runs (baselines and treatments, whole: not their shards), in run order."""
    out: list[Run] = []
    for s in steps():
        if s.run is not None and s.run.whole() not in out:
            out.append(s.run.whole())
    return out
