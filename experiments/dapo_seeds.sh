#!/usr/bin/env bash
# RSP-DAPO against plain DAPO with 3 seeds per arm (issue #16, item 2): the same budget and data for both
# arms (16 steps x 2 prompts x 8 rollouts, LoRA, the settings of docs/results/dapo-smollm2-arith), only
# --rsp-length differs (4 = every rollout carries its own RSP, 0 = plain DAPO); then every trained policy
# on the same 32 held-out arithmetic test problems x 32 attempts with the sampling it was trained with
# (RSP-DAPO with RSP, plain DAPO with temperature alone). The two arms of a seed run side by side, one
# thread each, at the lowest priority. Resumable: `rsp train` and `rsp eval` resume their directories.
# Afterwards: `python experiments/dapo_seeds_summary.py` (per-seed paired differences, mean across seeds).
#
#   bash experiments/dapo_seeds.sh          # seeds 0 1 2;  SEEDS="1 2" bash experiments/dapo_seeds.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
. "$ROOT/scripts/activate.sh"
export OMP_NUM_THREADS=1
OUT="${DAPO_SEEDS_OUT:-runs/dapo-seeds}"

arm() {  # arm SEED L
  local seed="$1" L="$2" dir="$OUT/L$2-s$1" method=temperature
  [ "$L" = 0 ] || method=rsp
  nice -n 19 rsp train --model smollm2-135m-instruct --task arith --arith-steps 1 --arith-max-value 10 \
    --rsp-length "$L" --group-size 8 --prompts-per-step 2 --steps 16 --lr 5e-5 --max-new-tokens 128 \
    --overlong-buffer 32 --temperature 0.7 --max-extra-rounds 1 --checkpoint-every 4 --seed "$seed" \
    --save-merged --quiet --out "$dir/train"
  nice -n 19 rsp eval --model "$dir/train/merged" --engine lean --task arith --arith-steps 1 \
    --arith-max-value 10 --limit 32 --n 32 --methods "$method" --rsp-length 4 --temperature 0.7 \
    --max-new-tokens 128 --batch-size 32 --seed 0 --quiet --out "$dir/eval" > /dev/null
  echo "[dapo-seeds $(date +%H:%M:%S)] done: seed $seed, L=$L"
}

for seed in ${SEEDS:-0 1 2}; do
  arm "$seed" 0 &
  off=$!
  arm "$seed" 4 &
  on=$!
  wait "$off"  # a failed arm stops the script (set -e) once both have ended
  wait "$on"
done
echo "[dapo-seeds] all done; python experiments/dapo_seeds_summary.py"
