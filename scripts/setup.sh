#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with torch, the Rust tokenizer trainer and nanochat.
#   bash scripts/setup.sh            # idempotent; re-run after pulling
# Environment knobs:
#   NANOCHAT_TORCH_SPEC   torch requirement (default: torch; CPU build from a local wheel folder when one is given)
#   NANOCHAT_TORCH_INDEX  extra index for torch, e.g. https://download.pytorch.org/whl/cu130 (DGX Spark, aarch64)
#   NANOCHAT_WHEELS       a folder of local wheels to prefer (e.g. a CPU torch build)
#   PYTHON                interpreter for the venv (default python3; needs >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "nanochat needs Python >= 3.10")'

# Rust toolchain for the BPE trainer
if ! command -v cargo >/dev/null 2>&1; then
  say "installing cargo/rustc (apt)"
  apt-get update -qq && apt-get install -y -qq cargo rustc >/dev/null
fi

# Rust crates: from crates.io when it is reachable, else from Debian's packaged crates (offline machines)
if ! "$PYTHON" -c 'import urllib.request; urllib.request.urlopen("https://index.crates.io/config.json", timeout=5)' >/dev/null 2>&1; then
  if ! ls -d /usr/share/cargo/registry/pyo3-0.* >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    say "crates.io unreachable: installing Debian's Rust crates (apt)"
    apt-get update -qq && apt-get install -y -qq librust-pyo3-dev librust-rayon-dev librust-fancy-regex-dev \
      librust-ahash-dev librust-indexmap-dev librust-regex-dev >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

# --- DGX Spark and other aarch64 + NVIDIA machines (GB10 is sm_121): torch's cu130 build -----------------------
# PyPI's default aarch64 torch has no CUDA; the CUDA 13 index has aarch64 wheels with sm_121 kernels. Only a
# default is set here: an explicit NANOCHAT_TORCH_INDEX (or a local wheel folder) still wins.
if [ "$(uname -m)" = "aarch64" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if [ -z "${NANOCHAT_TORCH_INDEX:-}" ] && [ -z "${NANOCHAT_WHEELS:-}" ]; then
    export NANOCHAT_TORCH_INDEX=https://download.pytorch.org/whl/cu130
    say "aarch64 with an NVIDIA GPU ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)): torch from $NANOCHAT_TORCH_INDEX"
  fi
  # Triton (torch.compile) needs CUDA 13's ptxas for sm_121; train.py sets TRITON_PTXAS_PATH when it finds it
  if [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/ptxas" ]; then
    say "note: no ptxas under ${CUDA_HOME:-/usr/local/cuda}/bin; install the CUDA 13 toolkit for hardware.compile=true"
  fi
fi
# --- end of the aarch64 + CUDA 13 block --------------------------------------------------------------------------

# torch: honour a local wheel folder (CPU build) so no multi-GB CUDA download is pulled in by accident
WHEELS=${NANOCHAT_WHEELS:-}
if [ -z "$WHEELS" ] && [ -d /opt/wheels ] && ls /opt/wheels/torch-*.whl >/dev/null 2>&1; then WHEELS=/opt/wheels; fi
FIND=()
[ -n "$WHEELS" ] && FIND=(--find-links "$WHEELS")
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  SPEC=${NANOCHAT_TORCH_SPEC:-torch}
  if [ -n "$WHEELS" ] && [ -z "${NANOCHAT_TORCH_SPEC:-}" ]; then
    SPEC="torch==$(ls "$WHEELS"/torch-*.whl | head -n1 | sed -E 's/.*torch-([0-9.]+)(\+[a-z0-9]+)?-.*/\1/')"
  fi
  say "installing $SPEC"
  if [ -n "${NANOCHAT_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" "${FIND[@]}" --extra-index-url "$NANOCHAT_TORCH_INDEX" "$SPEC"
  else
    "${PIP[@]}" "${FIND[@]}" "$SPEC"
  fi
fi

say "building the Rust BPE trainer (rustbpe/)"
"${PIP[@]}" "maturin>=1.0,<2.0"
PYTHON="$PY" bash scripts/build_rustbpe.sh

say "installing nanochat and its dependencies"
"${PIP[@]}" "${FIND[@]}" -e ".[dev]"
say "done: $("$PY" -c 'import torch, lightning, nanochat_rustbpe; print(f"torch {torch.__version__}, lightning {lightning.__version__}")')"
