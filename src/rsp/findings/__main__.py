"""`python -m rsp.findings commands | run | select-gsm8k | report`: the map of issue #16 from one place.

Why a module entry point and not an `rsp` subcommand: the CLI module is shared with other work; this
entry point keeps the map's commands next to the cell list they print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsp.findings", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("commands", help="print every step's command line, in run order")
    r = sub.add_parser("run", help="run every step (resumable); prefer scripts/findings.sh")
    r.add_argument("--jobs", type=int, default=2, help="steps run at once (default: %(default)s)")
    s = sub.add_parser("select-gsm8k", help="choose a model's GSM8K problems from its screening run")
    s.add_argument("--screen", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--limit", type=int, required=True)
    rep = sub.add_parser(
        "report", help="rebuild docs/findings/ and the tables in docs/findings.md from runs/"
    )
    rep.add_argument("--root", type=Path, default=None, help="runs root (default: runs/findings)")
    rep.add_argument("--out", type=Path, default=Path("docs/findings"))
    rep.add_argument("--doc", type=Path, default=Path("docs/findings.md"))
    args = p.parse_args(argv)

    if args.cmd == "commands":
        from rsp.findings.cells import steps

        try:
            for step in steps():
                print(step.command)
        except BrokenPipeError:  # `... --print | head`
            pass
        return 0
    if args.cmd == "run":
        from rsp.findings.runner import run_all

        return 1 if run_all(args.jobs) else 0
    if args.cmd == "select-gsm8k":
        from rsp.findings.select import SelectionError, select_gsm8k

        try:
            ids = select_gsm8k(args.screen, args.out, args.limit)
        except SelectionError as exc:
            print(f"select-gsm8k: {exc}", file=sys.stderr)
            return 1
        print(f"selected {len(ids)} problems: {', '.join(ids)}")
        return 0
    if args.cmd == "report":
        from rsp.findings.report import build_report

        build_report(root=args.root, out=args.out, doc=args.doc)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
