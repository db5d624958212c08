"""`rsp lm-eval ARGS...`: lm-eval's own command line, with the rsp models and task configs made known first.

Why a wrapper: lm-eval 0.4.13 has no entry-point plugin registry, so `lm_eval --model rsp-hf` cannot find a
model defined in another package. This registers `rsp-hf` / `rsp-vllm`, adds the shipped task folder to
`--include_path`, and otherwise runs lm-eval's CLI with exactly its arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

INSTALL_HINT = "pip install 'random-soft-prompts[lm-eval]'"


def run_cli(argv: Sequence[str]) -> int:
    """Run lm-eval's CLI on `argv` (the arguments after `rsp lm-eval`); returns the exit status."""
    try:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError as exc:
        why = f"lm-evaluation-harness is not installed ({exc}); {INSTALL_HINT}"
        print(f"rsp lm-eval: error: {why}", file=sys.stderr)
        return 2
    from rsp.integrations.lm_eval import TASKS_DIR, RSPArgumentError, RSPSettings  # registers the models

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # HarnessCLI reads sys.argv (and inserts `run` for the legacy form)
    try:
        setup_logging()
        parser = HarnessCLI()
        args = parser.parse_args()
        model_args = getattr(args, "model_args", None)
        if getattr(args, "model", None) in ("rsp-hf", "rsp-vllm") and isinstance(model_args, dict):
            RSPSettings.pop_from(dict(model_args), args.model)  # fail now, not after lm-eval indexes tasks
        if hasattr(args, "include_path"):
            user = args.include_path
            if not user and getattr(args, "config", None):  # a --config YAML's include_path is kept too
                from lm_eval.config.evaluate_config import EvaluatorConfig

                user = EvaluatorConfig.load_yaml_config(args.config).get("include_path")
            args.include_path = with_rsp_tasks(user, str(TASKS_DIR))
        parser.execute(args)
    except RSPArgumentError as exc:
        print(f"rsp lm-eval: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.argv = saved
    return 0


def with_rsp_tasks(include_path: str | list[str] | None, tasks_dir: str) -> list[str]:
    """The shipped task folder first, then the user's (lm-eval lets later folders override earlier ones)."""
    if not include_path:
        return [tasks_dir]
    extra = [include_path] if isinstance(include_path, str) else list(include_path)
    return [tasks_dir, *(p for p in extra if p != tasks_dir)]
