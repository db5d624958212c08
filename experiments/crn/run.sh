#!/usr/bin/env bash
# Common random numbers (CRN), measured on one committed cell of the findings map: SmolLM2 arith1 fp32,
# temperature vs temperature + RSP (L=4, T=0.7), 32 problems x 32 attempts, seed 0 -- the same problems and
# attempt count as the map's independent-streams pair (docs/findings/ledger/smollm2/arith1/*_fp32). Both
# arms run in one `rsp eval` with --common-random-numbers, so each problem's batches decode with the same
# seed in both arms. Resumable (rerun after a kill). Then: python experiments/crn/compare.py
set -euo pipefail
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 rsp eval --model smollm2-135m-instruct --engine lean --dtype float32 --task arith \
  --arith-steps 1 --arith-max-value 10 --limit 32 --n 32 --methods temperature,rsp --rsp-length 4 \
  --rsp-scale 1 --rsp-position after_generation_prompt --temperature 0.7 --max-new-tokens 128 \
  --batch-size 32 --seed 0 --common-random-numbers --quiet --out "${RSP_CRN_OUT:-runs/crn/smollm2-arith1-crn}"
