"""Rename the settings renamed before rsp's first release in the committed results, once.

Why: rsp keeps no compatibility layer for names it changed before 0.1.0 (`position` is `rsp_position`,
`stats_rows` `rsp_stats_rows`, `method_extra` `method_options`, a soft-prompt run's `length` `rsp_length`;
the table is `rsp.renamed.RENAMED`). The run summaries committed under docs/ (an eval's summary.json, an
analysis's metrics.json, a soft-prompt run's history.json) record the settings they ran with under
`"config"`; this rewrites those keys in place, keeping each file's order, indentation and values, so the
docs use the names a reader types today. It touches nothing else: the findings ledger's entries already
use the current keys, and their `command` lines are the frozen code's, run as written (docs/findings.md).

    python scripts/convert_renamed_keys.py            # rewrite the files that still have old keys
    python scripts/convert_renamed_keys.py --check    # list them, change nothing; exit 1 if any

Run once on 2026-12-07; a second run finds nothing to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rsp.renamed import RENAMED

ROOT = Path(__file__).resolve().parents[1]
# the committed run summaries whose "config" is a command's saved settings
PATTERNS = ("docs/results/**/summary.json", "docs/results/**/history.json", "docs/analysis/**/metrics.json")


def _indent(text: str) -> int | None:
    """The indentation json.dumps wrote the file with (None: one line)."""
    second = text.split("\n", 2)[1] if "\n" in text else ""
    return len(second) - len(second.lstrip(" ")) if second.strip() else None


def convert(path: Path, *, write: bool) -> list[str]:
    """The renames `path` needs ("position -> rsp_position"); with `write`, apply them."""
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        return []
    renames = RENAMED["setting"]
    old = [k for k in config if k in renames and renames[k] not in config]
    if not old:
        return []
    indent = _indent(text)
    if json.dumps(data, indent=indent) + "\n" != text:  # only rewrite files this reproduces byte for byte
        raise SystemExit(f"{path}: not in json.dumps(indent={indent}) form; convert it by hand")
    if write:
        data["config"] = {renames.get(k, k) if k in old else k: v for k, v in config.items()}
        path.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    return [f"{k} -> {renames[k]}" for k in old]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="list the files with old keys; change nothing")
    args = ap.parse_args(argv)
    found = 0
    for pattern in PATTERNS:
        for path in sorted(ROOT.glob(pattern)):
            renames = convert(path, write=not args.check)
            if renames:
                found += 1
                print(f"{path.relative_to(ROOT)}: {', '.join(renames)}")
    print(f"{found} file(s) {'with old keys' if args.check else 'converted'}")
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
