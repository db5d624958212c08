#!/usr/bin/env bash
# The main job: SmolLM2-135M-Instruct (packaged, offline), temperature sampling alone versus
# temperature + Random Soft Prompt, on the built-in synthetic arithmetic task (1 operation, numbers
# up to 10: the model's per-attempt accuracy there is low but not zero, so Pass@k has room to move).
# Resumable: rerun after a kill and finished attempts are kept. Extra flags are passed to `rsp eval`
# (`--limit 30 --n 16` for the earlier, larger demonstration).
# Size: 12 problems x 8 attempts per method, six batches of 32, so that the job ends within 10 minutes on
# 2 cores that compute in float32 (one batch of 32 attempts of up to 128 tokens took 61 s on an AVX2 EPYC;
# most of SmolLM2's attempts here run to the token limit). A demonstration, not a measurement.
# Engine: lean, the fastest engine whose greedy completions are token-identical to hf's on this model
# (benchmarks/engine_agreement.py). dtype: bf16 where the CPU multiplies bf16 natively (AVX-512 BF16 or
# AMX); float32 where torch would emulate bf16 (AVX2 only), which costs about 4x per attempt there
# (docs/performance.md, "bf16 on a CPU without native bf16"). Both arms always share one dtype, so the
# comparison is the same; summary.json records which one ran. RSP_MAIN_DTYPE overrides the choice.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The package alone (no extras): all the main job needs. After scripts/test.sh, .venv already has it.
export RSP_EXTRAS="${RSP_EXTRAS-}"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
cd "$ROOT"
DTYPE="${RSP_MAIN_DTYPE:-$(python -c 'from rsp.models.loading import cpu_has_native_bf16 as f; print("bfloat16" if f() else "float32")')}"
echo "[main] dtype $DTYPE"
rsp eval --model smollm2-135m-instruct --task arith --arith-steps 1 --arith-max-value 10 --limit 12 \
  --n 8 --methods temperature,rsp --rsp-length 4 --temperature 0.7 --max-new-tokens 128 \
  --batch-size 32 --seed 0 --engine lean --dtype "$DTYPE" --out "${RSP_MAIN_OUT:-runs/main}" "$@"
