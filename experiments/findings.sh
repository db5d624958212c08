#!/usr/bin/env bash
# The map of issue #16: where does RSP help? Runs every cell (an `rsp eval` command line each, defined
# once in experiments/findings/cells.py) over both packaged models, most informative cells first, at the
# lowest CPU priority, two single-threaded steps at a time. Hours long and resumable: kill it at any
# point and rerun; finished attempts are kept and finished cells are skipped. Each step's wall and CPU
# time goes to runs/findings/timing.jsonl. Afterwards: `python -m experiments.findings report`.
#
#   bash experiments/findings.sh            # run (or resume) the whole map
#   bash experiments/findings.sh --print    # print every step's command line, in run order
#
# FINDINGS_JOBS (default 2) steps run at once; OMP_NUM_THREADS (default 1) threads each. FINDINGS_HOURS
# (default: none) starts no step that would not finish within that many hours (a session's machine goes
# away with runs/ at a known time; finished runs are kept in the committed ledger, partial ones are not).
#
# The runs use a frozen copy of the code, runs/findings/code/src (git archive of MAP_COMMIT below, named
# in runs/findings/code/COMMIT), not the working tree: the map takes sessions and other work edits the
# checkout meanwhile, and every cell must come from one version of the prompts, engine and grader.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
. "$ROOT/scripts/activate.sh"
case "${1:-run}" in
  --print|list) exec python -m experiments.findings commands ;;
  run) ;;
  *) echo "usage: bash experiments/findings.sh [--print]" >&2; exit 2 ;;
esac
# The code every step runs on, the same in every session (a fresh checkout has no runs/, so "HEAD at the
# first start" would move with each session): 32d213b made the first 24 runs, 647935c SmolLM2's
# soft-prompt run, this commit (rsp eval --offset for the shards, the recorded screen shards) the rest.
# The only change among them that touches a sample is the stop-string fix 907b6cd (num_tokens only).
MAP_COMMIT=e58be48bc69f2dafcda81c412b61878dabcf4627
CODE="$ROOT/runs/findings/code"
if [ ! -d "$CODE/src/rsp" ]; then
  mkdir -p "$CODE"
  git -C "$ROOT" archive "$MAP_COMMIT" src | tar -x -C "$CODE"
  echo "$MAP_COMMIT" > "$CODE/COMMIT"
fi
if [ "$(cat "$CODE/COMMIT")" != "$MAP_COMMIT" ]; then
  echo "[findings] $CODE holds commit $(cat "$CODE/COMMIT"), not the map's $MAP_COMMIT; remove it" >&2
  exit 1
fi
echo "[findings] code: $CODE/src at commit $(cat "$CODE/COMMIT")"
export FINDINGS_CODE_SRC="$CODE/src"  # the steps run on it; the runner itself runs from the working tree
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
HOURS=()
if [ -n "${FINDINGS_HOURS:-}" ]; then HOURS=(--hours "$FINDINGS_HOURS"); fi
exec nice -n 19 python -m experiments.findings run --jobs "${FINDINGS_JOBS:-2}" "${HOURS[@]}"
