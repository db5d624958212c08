"""Run the map's steps in list order, a few at a time, and log what each cost.

Why a runner instead of a plain loop in the shell script: on a shared 2-core machine two
single-threaded processes at the lowest priority use idle cores without spin-waiting on each other
(one two-threaded process stalls whenever another job takes one core), and the CPU hours the issue
asks for are only known if every step's CPU time is recorded. Steps that depend on each other (a soft
prompt is trained before its cell; GSM8K is screened, then selected, then evaluated) form one group
that a single worker runs in order; groups are handed out in list order, so the most informative
cells still finish first. Every step is resumable on its own, so killing the runner loses at most the
batches in flight; the next start skips what is finished (an eval step whose run directory holds all
its attempts under the same settings is not even started, which saves reloading a model to learn that).

The steps run on the code named by `FINDINGS_CODE_SRC` (a frozen copy, see scripts/findings.sh),
while this orchestration runs from the working tree. Every finished eval run is written to the
committed ledger (`rsp.findings.ledger`) as soon as it finishes, and a run with a ledger entry counts
as finished: runs/ does not survive into the next session's checkout, the ledger does once committed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from rsp.findings.cells import (
    DIFFICULTY_BY_KEY,
    ROOT,
    SCREEN_ATTEMPTS,
    SCREEN_SHARD_PROBLEMS,
    SOFT_PROMPT_BUDGET_S,
    Run,
    Step,
    steps,
)
from rsp.findings.ledger import LEDGER, TIMING, machine


def groups(all_steps: list[Step]) -> list[list[Step]]:
    """Consecutive steps that share a chain stay together, in order; every other step is its own group."""
    out: list[list[Step]] = []
    for step in all_steps:
        if step.chain and out and out[-1][0].chain == step.chain:
            out[-1].append(step)
        else:
            out.append([step])
    return out


def _count_samples(step: Step) -> int:
    path = Path(step.outputs[0]) / "samples.jsonl" if step.outputs else None
    if path is None or not path.is_file():
        return 0
    keys = set()  # unique (problem, method, attempt): a duplicated line must not count twice
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                continue  # a torn last line (a killed writer); resume rewrites it
            try:
                r = json.loads(line)
                keys.add((r["problem_id"], r["method"], r["attempt"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return len(keys)


# The map's steps run on frozen code (scripts/findings.sh) older than some renames: its command lines say
# `--position` and its config.json files `position`, ... where current rsp says `rsp_position`. These are
# facts of that frozen code, read here to compare its runs with what current rsp would save.
FROZEN_KEYS = {
    "position": "rsp_position",
    "stats_rows": "rsp_stats_rows",
    "stats_mean": "rsp_stats_mean",
    "method_extra": "method_options",
}
FROZEN_FLAGS = {"--position": "--rsp-position"}


def _current_argv(argv: list[str]) -> list[str]:
    return [FROZEN_FLAGS.get(a, a) for a in argv]


def expected_config(run: Run) -> dict:
    """The config `rsp eval` saves for this run's command line (in the frozen code's flag spelling,
    `FROZEN_FLAGS`), in the current key spelling."""
    from rsp.cli import eval_parser

    cfg, _ = eval_parser().parse(_current_argv(run.argv()[2:]))  # after "rsp eval"
    return cfg.to_dict()


def expected_screen_config(step: Step) -> dict:
    """The config `rsp eval` saves for a GSM8K screen shard's command line (after its `test -f` guards)."""
    from rsp.cli import eval_parser

    cfg, _ = eval_parser().parse(_current_argv(shlex.split(step.command.split(" || ")[-1])[2:]))
    return cfg.to_dict()


def current_spelling(config: dict) -> dict:
    """A config.json's config as the frozen code saved it, with its keys in the current spelling
    (`FROZEN_KEYS`)."""
    return {FROZEN_KEYS.get(k, k): v for k, v in config.items()}


def finished(step: Step, ledger: Path = Path(LEDGER)) -> bool:
    """An eval step with a complete ledger entry, or whose directory holds every attempt, saved under
    exactly this step's settings. (An entry under other settings raises `LedgerError`.)"""
    if step.run is None:
        return False
    from rsp.findings.ledger import read_entry

    for run in (step.run, step.run.whole()):  # a shard of a run that is in the ledger whole is done too
        entry = read_entry(run, ledger)
        if entry is not None and entry.complete:
            return True
    cfg_path = Path(step.run.out) / "config.json"
    if not cfg_path.is_file() or _count_samples(step) < step.run.problems * step.run.n:
        return False
    try:
        saved = json.loads(cfg_path.read_text(encoding="utf-8")).get("config")
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(saved, dict) and current_spelling(saved) == expected_config(step.run)


def frozen_env(code_src: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment (plus `extra`) with the map's frozen code `code_src` first on
    PYTHONPATH, so the `rsp` it runs samples with that code; unchanged when `code_src` is empty."""
    env = dict(os.environ, **(extra or {}))
    if code_src:
        env["PYTHONPATH"] = code_src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _child_env(step: Step) -> dict[str, str]:
    """The environment of a step: the map's frozen code first on PYTHONPATH for every step that samples
    or trains; the GSM8K selection is bookkeeping over committed records and runs on the working tree."""
    return frozen_env(os.environ.get("FINDINGS_CODE_SRC") if step.kind != "select" else None)


def _bank(step: Step, log_lock: threading.Lock) -> None:
    """Bank what a finished step made (once): an eval run's ledger entry, a screen shard's record, a
    trained soft prompt's vectors."""
    from rsp.findings.analyse import bank_run
    from rsp.findings.select import record_screen_shard

    with log_lock:
        if step.run is not None:
            banked = bank_run(step.run, None, Path(LEDGER))
        elif step.kind == "screen":
            banked = record_screen_shard(
                Path(step.outputs[0]),
                Path(step.outputs[1]),
                SCREEN_SHARD_PROBLEMS,
                expected_screen_config(step),
            )
        elif step.kind == "train-soft-prompt":
            banked = keep_soft_prompt(Path(step.outputs[0]), Path(step.outputs[1]))
        else:
            return
    if banked:
        print(f"[findings {time.strftime('%H:%M:%S')}] ledger: {banked} (commit it)", flush=True)


def keep_soft_prompt(trained: Path, record: Path) -> Path | None:
    """Copy a trained soft prompt's loss history and curve to its committed place, and its vectors as
    JSON text (`tensorjson.dump`; no weight files are committed), once."""
    from rsp.findings.tensorjson import dump

    vectors, kept = trained / "soft_prompt.safetensors", record / "soft_prompt.json"
    if not vectors.is_file() or kept.is_file():
        return None
    record.mkdir(parents=True, exist_ok=True)
    for name in ("history.json", "loss.png"):
        if (trained / name).is_file():
            shutil.copyfile(trained / name, record / name)
    return dump(vectors, kept)  # the vectors last: their presence = kept


def screen_done(model: str) -> bool:
    """Whether the model's GSM8K screen, as recorded in the ledger, has found its problems (or screened
    as many as it may): its remaining shards cannot change the choice and are skipped."""
    from rsp.findings.cells import MODEL_BY_KEY, screen_records
    from rsp.findings.select import screen_progress

    return screen_progress(Path(screen_records(MODEL_BY_KEY[model]))).done


def run_step(step: Step, log_lock: threading.Lock, timing_path: Path = Path(TIMING)) -> int:
    """Run one step's command in bash; append its wall time, CPU time and new attempts to timing.jsonl."""
    if finished(step):
        print(
            f"[findings {time.strftime('%H:%M:%S')}] already finished: {step.run.out if step.run else ''}",
            flush=True,
        )
        _bank(step, log_lock)
        return 0
    if step.kind == "screen" and screen_done(step.model):
        print(
            f"[findings {time.strftime('%H:%M:%S')}] the {step.model} screen is done: skip {step.outputs[0]}"
        )
        return 0
    before = _count_samples(step)
    started = time.time()
    print(f"[findings {time.strftime('%H:%M:%S')}] start: {step.command}", flush=True)
    proc = subprocess.Popen(["bash", "-c", step.command], env=_child_env(step))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    after = _count_samples(step)
    record = {
        "command": step.command,
        "kind": step.kind,
        "tier": step.tier,
        "out": step.outputs[0] if step.outputs else None,
        "rc": proc.returncode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "new_attempts": after - before,
        "threads": os.environ.get("OMP_NUM_THREADS", ""),
        "machine": machine(),
    }
    if not is_noop(record):
        with log_lock:
            timing_path.parent.mkdir(parents=True, exist_ok=True)
            with timing_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    if proc.returncode == 0:
        _bank(step, log_lock)
    state = "done" if proc.returncode == 0 else f"FAILED (rc={proc.returncode})"
    print(f"[findings {time.strftime('%H:%M:%S')}] {state} in {wall:.0f} s: {step.command}", flush=True)
    return proc.returncode


def is_noop(record: dict) -> bool:
    """A step that made nothing in no time (its `test -f ... ||` guard held): not worth a timing record."""
    return record["rc"] == 0 and record["new_attempts"] == 0 and record["wall_s"] < 5.0


def live_outputs(exclude: int | None = None) -> set[str]:
    """The `--out` directories under runs/findings of the rsp processes running on this machine, whoever
    started them (this runner, another runner, a step started by hand; `--out DIR` or `--out=DIR`,
    relative to the process's working directory or absolute), as paths relative to the repository
    root: a step whose directory is among them is left alone, and a worker starts a step only while
    fewer than `jobs` of them run."""
    out: set[str] = set()
    root = (Path.cwd() / ROOT).resolve()
    for proc in Path("/proc").glob("[0-9]*"):
        if exclude is not None and proc.name == str(exclude):
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
            cwd = (proc / "cwd").resolve()
        except OSError:
            continue
        values = [v for f, v in zip(args, args[1:], strict=False) if f == "--out"]
        values += [a.removeprefix("--out=") for a in args if a.startswith("--out=")]
        for value in values:
            path = (cwd / value).resolve()
            if path == root or root in path.parents:
                out.add(f"{ROOT}/{path.relative_to(root).as_posix()}")
    return out


LOAD_S = 60  # loading a model and starting a step, on top of its attempts
SLOT_POLL_S = 10.0
MARGIN = 1.15  # a step is started only if 1.15x its estimate fits before the deadline


LOCKS = f"{ROOT}/locks"


class StepLock:
    """A claim on a step that another runner sees at once: `flock` on a file per step output under
    `LOCKS`. `live_outputs` sees a step only once its child has exec'd, so two runners started together
    could both start it in that window; the lock closes it. A shard holds its whole run's lock shared and
    its own exclusively, so shards of one run go side by side and never beside the whole run. The kernel
    drops the locks when the runner dies (its orphaned children are still seen by `live_outputs`)."""

    def __init__(self) -> None:
        self._files: list = []

    def take(self, key: str, *, shared: bool = False) -> bool:
        Path(LOCKS).mkdir(parents=True, exist_ok=True)
        f = open(Path(LOCKS) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._files.append(f)
        return True

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the descriptor releases its flock
        self._files.clear()


def claim(step: Step) -> StepLock | None:
    """Lock `step` (and share its whole run's lock); None when another runner holds either."""
    key = step.outputs[0] if step.outputs else step.command
    whole = step.run.whole().out if step.run is not None else key
    lock = StepLock()
    if whole != key and not lock.take(whole, shared=True):
        return None
    if not lock.take(key):
        lock.release()
        return None
    return lock


def estimate_s(step: Step, rates: dict[str, float], gsm8k: dict[str, float] | None = None) -> float | None:
    """Seconds the step still needs on one core: its missing attempts at the model's measured CPU seconds
    per attempt (`gsm8k`'s rate on GSM8K; without one, the arithmetic rate scaled by max new tokens),
    or the training budget; None when no rate is known yet."""
    if any(Path(f).is_file() for f in step.done_if):
        return 0.0
    if step.kind == "select" or (step.kind == "screen" and screen_done(step.model)):
        return 0.0
    if step.kind == "train-soft-prompt":
        return SOFT_PROMPT_BUDGET_S + 3 * LOAD_S  # training, conversion, the final save
    if step.run is not None:
        model, difficulty, total = step.run.model.key, step.run.difficulty, step.run.problems * step.run.n
    else:  # a shard of the GSM8K screen: two arms
        model = step.model
        difficulty, total = DIFFICULTY_BY_KEY["gsm8k"], SCREEN_SHARD_PROBLEMS * SCREEN_ATTEMPTS * 2
    if finished(step):
        return 0.0
    if difficulty.key == "gsm8k" and gsm8k is not None and model in gsm8k:
        rate = gsm8k[model]
    elif model in rates:
        rate = rates[model] * difficulty.max_new_tokens / DIFFICULTY_BY_KEY["arith1"].max_new_tokens
    else:
        return None
    return LOAD_S + max(0, total - _count_samples(step)) * rate


def step_rates(timing: list[dict], here: str, dtype: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per-attempt rates (arithmetic, GSM8K) for a step in `dtype` on machine `here`, for a wall-clock
    deadline: this machine's wall seconds per attempt (at the lowest priority on a shared machine a
    step's wall time is well above its CPU time), other machines' rates scaled (`report.rate_tables`)."""
    from rsp.findings.report import rate_tables

    return rate_tables(timing, dtype, machine=here, clock="wall_s")


def run_all(jobs: int = 2, hours: float | None = None) -> int:
    """Run every group; a failed step stops the rest of its group only. Returns the number of failures.

    With `hours`: a step is not started when its estimate (`estimate_s`, with a margin) would run past
    that many hours from now; its group is left for the next start and the worker takes the next group.
    A session whose machine is reclaimed at a known time then spends its last hour on cells that finish
    (and enter the ledger) instead of on a long step whose partial attempts are lost with runs/."""
    from rsp.findings.report import read_timing, step_dtype

    deadline = None if hours is None else time.time() + hours * 3600
    work: queue.Queue[list[Step]] = queue.Queue()
    for g in groups(steps()):
        work.put(g)
    lock = threading.Lock()
    failures = [0]

    def fits(step: Step) -> bool:
        if deadline is None:
            return True
        with lock:
            timing = read_timing(Path(TIMING))
            dtype = step.run.dtype if step.run is not None else step_dtype(step.command)
            est = estimate_s(step, *step_rates(timing, machine(), dtype))
        left = deadline - time.time()
        if est is None or est * MARGIN <= left:
            return True
        print(
            f"[findings {time.strftime('%H:%M:%S')}] deferred (needs ~{est / 60:.0f} min, "
            f"{left / 60:.0f} min left): {step.command}",
            flush=True,
        )
        return False

    own: set[str] = set()  # this runner's steps in flight (or about to start)

    def acquire(step: Step) -> tuple[str, StepLock] | None:
        """Wait for a free slot (steps started elsewhere count) and take it; None: another runner is
        making the step (it holds the step's claim) and will carry the step's group on. A step whose
        process runs with nobody's claim (a child left behind by a killed runner, or started by hand) is
        waited for, then run here: it resumes with nothing to do, is banked, and its group goes on."""
        key = step.outputs[0] if step.outputs else step.command
        waiting: StepLock | None = None  # our claim on a step whose unclaimed process we wait out
        while True:
            with lock:
                live = live_outputs(exclude=os.getpid()) | own
                whole = step.run.whole().out if step.run is not None else key
                if (key in live and key not in own) or (whole != key and whole in live):
                    if waiting is None:
                        waiting = claim(step)
                        if waiting is None:
                            return None  # this step, or the whole run it is a shard of, is another runner's
                        print(
                            f"[findings {time.strftime('%H:%M:%S')}] waiting for its unclaimed process "
                            f"to end: {step.command}",
                            flush=True,
                        )
                elif len(live) < jobs:
                    claimed = waiting if waiting is not None else claim(step)
                    if claimed is None:
                        return None  # another runner has just claimed it; its child has not exec'd yet
                    own.add(key)
                    return key, claimed
            time.sleep(SLOT_POLL_S)

    def worker() -> None:
        while True:
            try:
                group = work.get_nowait()
            except queue.Empty:
                return
            for step in group:
                taken = acquire(step)
                if taken is None:
                    print(f"[findings {time.strftime('%H:%M:%S')}] running elsewhere: {step.command}")
                    break
                key, claimed = taken
                try:
                    if not fits(step):
                        break
                    rc = run_step(step, lock)
                except Exception as exc:  # e.g. LedgerError: count it and end this group, not the worker
                    print(f"[findings {time.strftime('%H:%M:%S')}] ERROR {exc!r}: {step.command}", flush=True)
                    rc = 1
                finally:
                    with lock:
                        own.discard(key)
                        claimed.release()
                if rc != 0:
                    with lock:
                        failures[0] += 1
                    break

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(
        f"[findings] finished with {failures[0]} failed step(s); rebuild the report with "
        "`python -m rsp.findings report`",
        file=sys.stderr,
    )
    return failures[0]
