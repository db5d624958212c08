"""Command line: `rsp <command> [flags]`, one entry per command in `COMMANDS`.

A command is `module:function(argv) -> exit status`, imported only when it runs, so `rsp --help` imports
nothing beyond the standard library, needs no optional extra, and an error in one command's dependencies
cannot break the others. Bad input raises a ValueError naming the setting, printed as
`rsp <command>: error: ...` with exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # "module:function", called with the command's arguments
    help: str


COMMANDS: dict[str, Command] = {
    "eval": Command("rsp.commands:eval_main", "sample N attempts per problem for each method and grade them"),
    "report": Command(
        "rsp.commands:report_main", "rebuild summary.md / summary.json / passk.png of an eval run"
    ),
    "compare": Command("rsp.commands:compare_main", "paired table of methods from different eval runs"),
    "methods": Command("rsp.commands:methods_main", "list the methods (what each attempt gets injected)"),
    "analyze": Command(
        "rsp.analysis.cli:main", "mechanism metrics: entropy/KL by position, attention mass, branching"
    ),
    "sweep": Command(
        "rsp.baselines.cli:sweep_main", "grid over method x L x scale x temperature on the same problems"
    ),
    "train-soft-prompt": Command(
        "rsp.baselines.cli:train_soft_prompt_main", "train L soft-prompt vectors with the model frozen"
    ),
    "train": Command("rsp.train.cli:main", "RSP-DAPO reinforcement learning (fresh RSP per rollout)"),
    "serve": Command(
        "rsp.server.cli:main", "OpenAI-compatible server: each of n samples carries its own RSP"
    ),
    "lm-eval": Command(
        "rsp.integrations.lm_eval_cli:run_cli",
        "EleutherAI lm-evaluation-harness with the rsp-hf / rsp-vllm models and rsp_* tasks "
        "(takes lm-eval's own arguments)",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: rsp [-v] <command> [flags]   (rsp <command> --help for its flags)",
        "",
        "Random Soft Prompts: inject, sample, grade, analyse, train.",
        "",
        "commands:",
        *(f"  {name:{width}s}  {cmd.help}" for name, cmd in COMMANDS.items()),
        "",
        "Every command but lm-eval also takes --config FILE.yaml (flags override it) and --print-config.",
        "  -v, --verbose  log more detail",
    ]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str]], int]:
    module, _, function = COMMANDS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return status
    except BrokenPipeError:  # `rsp ... | head`: the reader left; no traceback, Python's usual status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush fails too
        return 141


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while args and args[0] in ("-v", "--verbose"):
        verbose, args = True, args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"rsp: error: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    run = resolve(name)
    if name == "lm-eval":  # lm-eval's own parser and error handling, but the missing-weights hint is ours
        from rsp.models.packaged import PackagedModelMissing

        try:
            return int(run(rest) or 0)
        except PackagedModelMissing as exc:
            print(f"rsp {name}: error: {exc}", file=sys.stderr)
            return 2
    # here, not at the top: rsp.models.loading imports transformers, which `rsp --help` does not need
    from rsp.models.loading import ModelLoadError
    from rsp.runio import RunDirError
    from rsp.tasks.base import TaskError

    try:
        return int(run(rest) or 0)
    except (TaskError, ModelLoadError, RunDirError, FileNotFoundError, ValueError) as exc:
        print(f"rsp {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        why = "interrupted; finished records are saved, rerun the same command to resume"
        print(f"rsp {name}: {why}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
