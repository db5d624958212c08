"""`rsp analyze`: from a finished eval run (`--run`), or run what it needs itself (`--model/--task ...`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(subparsers) -> None:
    from rsp.cli import add_eval_arguments

    p = subparsers.add_parser(
        "analyze", help="mechanism metrics: entropy/KL by position, attention mass, branching"
    )
    p.add_argument("--run", help="an `rsp eval` run directory to analyse (no regeneration needed)")
    p.add_argument("--out", help="where to write metrics and the report (default: RUN/analysis or OUT given)")
    p.add_argument("--k", type=int, default=32, help="generated positions to analyse (default: %(default)s)")
    p.add_argument("--analysis-batch-size", type=int, default=16)
    p.add_argument("--max-problems", type=int, default=None)
    p.add_argument("--no-attention", action="store_true", help="skip the attention-mass pass")
    p.add_argument("--n", type=int, default=8, help="live mode: attempts per problem")
    p.add_argument("--methods", default="temperature,rsp,rsp-fixed", help="live mode: methods to compare")
    p.add_argument("--quiet", action="store_true")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_analyze, limit=12)


def cmd_analyze(args: argparse.Namespace) -> int:
    from rsp.analysis.report import write_report
    from rsp.analysis.run import AnalysisOptions, analyse_run, write_metrics

    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.run:
        run_dir = Path(args.run)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not an rsp eval run (no config.json)")
        out = Path(args.out) if args.out else run_dir / "analysis"
    else:
        if not args.out:
            raise ValueError("live mode (no --run) needs --out")
        from rsp.cli import eval_config_from_args
        from rsp.evaluation import run_eval

        out = Path(args.out)
        run_dir = out / "eval"
        run_eval(eval_config_from_args(args), run_dir, progress=not args.quiet)
    options = AnalysisOptions(
        k=args.k,
        batch_size=args.analysis_batch_size,
        max_problems=args.max_problems,
        attention=not args.no_attention,
    )
    result = analyse_run(run_dir, options=options, progress=not args.quiet)
    write_metrics(result, out)
    report = write_report(result, out, command="rsp " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"metrics: {out / 'metrics.json'}, {out / 'metrics.csv'}  report: {report}")
    return 0
