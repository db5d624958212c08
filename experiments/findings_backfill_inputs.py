"""Add the input digests (`ledger.used_inputs`) to ledger entries banked before entries carried them.

Why: a soft-prompt run's config names only the path of its vectors, and a GSM8K run's config only the
data directory, so an entry made with retrained vectors or a reselected problem set would pass the
ledger's settings check. Entries now record the digests of what the run read, and `read_entry` refuses
one that disagrees with the committed records. Entries banked before that (and by a runner still
running older code) lack them: this script computes them from the run directories under runs/findings,
which must still be on this machine, and writes them only where they equal what the committed records
give. Idempotent; entries that need no inputs get an empty mapping.

    python -m experiments.findings_backfill_inputs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.findings.cells import LEDGER, runs
from experiments.findings.ledger import entry_path, expected_inputs, used_inputs
from rsp.runio import atomic_write_text


def main() -> int:
    ledger, done, refused = Path(LEDGER), 0, 0
    for whole in runs():
        for run in [whole, *whole.shards()]:
            path = entry_path(run, ledger)
            if not path.is_file():
                continue
            entry = json.loads(path.read_text(encoding="utf-8"))
            if "inputs" in entry:
                continue
            expected = expected_inputs(run, ledger)
            used = used_inputs(run) if expected else {}
            if used != expected:
                print(f"refused {path}: the run read {used}, the records give {expected}", file=sys.stderr)
                refused += 1
                continue
            entry = {k: v for k, v in entry.items() if k != "problems"} | {
                "inputs": used,
                "problems": entry["problems"],
            }
            atomic_write_text(path, json.dumps(entry, indent=0, ensure_ascii=False) + "\n")
            print(f"{path}: inputs {used}")
            done += 1
    print(f"{done} entries given their inputs, {refused} refused")
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
