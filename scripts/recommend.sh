#!/usr/bin/env bash
# The procedure the README recommends for picking RSP's settings on a new model (issue #16, item 4):
# `rsp sweep` on a HELD-OUT split (here arithmetic's train split: problems disjoint from the test split
# that docs/findings.md reports), temperature alone against RSP at L in {1, 4, 16}, T=0.7, the default
# insertion point; then the rule fixed before looking at the data (docs/findings.md, "Recommendation"):
# turn RSP on, with the L of the largest paired pass@16 gain, only if that gain's 95% interval lies above
# zero; otherwise sample with temperature alone. Resumable (each cell is an `rsp eval` run).
#
#   bash scripts/recommend.sh smollm2-135m-instruct
#   bash scripts/recommend.sh gemma3-270m --prompt-style plain   # a base model: the few-shot prompt
# Extra flags after the model go to `rsp sweep`. Results: runs/recommend/MODEL/sweep.md (+ .csv, plots/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
. "$ROOT/scripts/activate.sh"
MODEL="${1:-smollm2-135m-instruct}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec nice -n "${RSP_NICE:-19}" rsp sweep --model "$MODEL" --engine lean --task arith --split train \
  --arith-steps 1 --arith-max-value 10 --limit 32 --n 16 --methods rsp --rsp-lengths 1,4,16 \
  --rsp-scales 1 --temperatures 0.7 --max-new-tokens 128 --batch-size 32 --seed 0 --quiet \
  --out "runs/recommend/$MODEL" "${@:2}"
