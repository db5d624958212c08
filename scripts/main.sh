#!/usr/bin/env bash
# The main job: SmolLM2-135M-Instruct (packaged, offline), temperature sampling alone versus
# temperature + Random Soft Prompt, on the built-in synthetic arithmetic task (1 operation, numbers
# up to 10: the model's per-attempt accuracy there is low but not zero, so Pass@k has room to move).
# Resumable: rerun after a kill and finished attempts are kept. Extra flags are passed to `rsp eval`.
# Engine: lean, the fastest engine whose greedy completions are token-identical to hf's on this model
# (benchmarks/engine_agreement.py). dtype float32: on a CPU without native bf16 (AVX2 only) torch
# emulates bf16 at about 4x the cost, and where bf16 is native SmolLM2 sampled about as fast in either
# (docs/models.md). Both arms use it, so the comparison is the same one, and the result no longer
# depends on whether the CPU has bf16.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
cd "$ROOT"
rsp eval --model smollm2-135m-instruct --task arith --arith-steps 1 --arith-max-value 10 --limit 30 \
  --n 16 --methods temperature,rsp --rsp-length 4 --temperature 0.7 --max-new-tokens 128 \
  --batch-size 32 --seed 0 --engine lean --dtype float32 --out "${RSP_MAIN_OUT:-runs/main}" "$@"
