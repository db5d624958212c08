#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first), in one environment: .venv with every extra the
# tests use, vllm-cpu included (requirements/lock.txt holds that set).
#   1. ruff (lint and format check), mypy (settings in pyproject.toml);
#   2. every test except the real-vLLM ones, on two pytest-xdist workers, while two runs go beside them:
#      the lower-bound resolutions against PyPI (marker "pypi": minutes, mostly waiting on the network,
#      which held an xdist worker idle for 5 of the stage's 10 minutes) and scripts/gpu_validate.py's CPU
#      dry run (tests/test_gpu_validate.py, its own subprocesses), which fills the cores xdist leaves
#      idle while a worker waits on a subprocess or the last long test;
#   3. the other real-vLLM tests (marker "vllm"), RSP_REQUIRE_VLLM=1 making a vLLM that cannot run a
#      failure, not a skip. tests/test_vllm_engine.py runs after the rest in a process of its own: after
#      the other files' in-process engines (TRL's colocated vLLM among them) had come and gone, vLLM's
#      process-global parallel state was torn down under that file's module-wide engine ("pipeline model
#      parallel group is not initialized").
# Arguments go to the pytest run of step 2; with arguments step 3 and the dry run are left out unless
# RSP_VLLM_STAGE=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RSP_EXTRAS="dev,hub,lm-eval,serve,train,vllm-cpu"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
SECONDS=0
ruff check .
ruff format --check .
mypy
echo "[test] lint and types: ${SECONDS} s"
VLLM_STAGE=0
if [ "$#" -eq 0 ] || [ "${RSP_VLLM_STAGE:-0}" = 1 ]; then VLLM_STAGE=1; fi
GPU_CHECK=tests/test_gpu_validate.py
status=0
STAGE2="not vllm"
if [ "$VLLM_STAGE" = 1 ]; then
  STAGE2="not vllm and not pypi"
  python -m pytest -q -m pypi -p no:cacheprovider > "$ROOT/.pytest-pypi.log" 2>&1 &
  pypi=$!
  RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
    python -m pytest -q -m vllm -p no:cacheprovider "$GPU_CHECK" > "$ROOT/.pytest-gpu-check.log" 2>&1 &
  gpu_check=$!
fi
python -m pytest -q -n 2 -m "$STAGE2" "$@" || status=$?
echo "[test] tests without vLLM done at ${SECONDS} s"
if [ "$VLLM_STAGE" = 1 ]; then
  export RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  python -m pytest -q -m vllm -p no:cacheprovider --ignore=tests/test_vllm_engine.py --ignore="$GPU_CHECK" ||
    status=$?
  python -m pytest -q -m vllm -p no:cacheprovider tests/test_vllm_engine.py || status=$?
  wait "$pypi" || status=$?
  echo "[test] the lower-bound resolutions (marker pypi, run beside the others):"
  tail -n 30 "$ROOT/.pytest-pypi.log"
  wait "$gpu_check" || status=$?
  echo "[test] $GPU_CHECK (run beside the others):"
  tail -n 30 "$ROOT/.pytest-gpu-check.log"
  echo "[test] vLLM tests done at ${SECONDS} s"
fi
exit "$status"
