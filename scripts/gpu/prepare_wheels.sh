#!/usr/bin/env bash
# Wheels an offline x86-64 GPU machine (Python 3.12, torch/lightning/numpy/pyarrow preinstalled) lacks for
# bench/gpu_check.py: Hydra and OmegaConf, the server (FastAPI, uvicorn, pydantic), the official openai client,
# and our Rust BPE trainer (an abi3 wheel built from rustbpe/). Run it here, with network to PyPI:
#   bash scripts/gpu/prepare_wheels.sh            # -> .whl/ (git-ignored), about 6 MB
# then copy the checkout plus .whl/ to the GPU machine and run scripts/gpu/run_check.sh there.
# Gradio (the web UI, ~50 MB with its dependencies) is left out: the check talks to the OpenAI-compatible API only.
# Environment: PYTHON (default .venv/bin/python, else python3), DEST (default .whl), PY_VERSION (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DEST=${DEST:-.whl}
PY_VERSION=${PY_VERSION:-3.12}

# Pinned to the versions this repository is tested with; one version of each (two would stop the install there).
BINARY=(
  hydra-core==1.3.8 omegaconf==2.3.1
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  openai==3.63.0 jiter==0.19.0 distro==1.9.0 sniffio==1.3.1 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5
  anyio==4.16.0 idna==3.20 h11==0.16.0 opentelemetry-api==1.45.2
)
# published as a source archive only (pure Python): built into a wheel here
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)

rm -rf "$DEST"
mkdir -p "$DEST"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
echo "[wheels] downloading ${#BINARY[@]} wheels for CPython $PY_VERSION x86-64"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
echo "[wheels] building ${SOURCE_ONLY[*]}"
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"

# the Rust tokenizer trainer: pyo3 abi3-py38, so one wheel serves every CPython >= 3.8 on x86-64 Linux
echo "[wheels] building nanochat-rustbpe (rustbpe/, abi3)"
if [ "$(uname -m)" != "x86_64" ]; then
  echo "[wheels] this machine is $(uname -m): the rustbpe wheel must be built on x86-64 for the GPU machine" >&2
  exit 1
fi
PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"
if ! command -v maturin >/dev/null; then "$PYTHON" -m pip install -q "maturin>=1.0,<2.0"; fi
(
  cd rustbpe
  if ! "$PYTHON" -c 'import urllib.request; urllib.request.urlopen("https://index.crates.io/config.json", timeout=5)' \
      >/dev/null 2>&1 && [ -d /usr/share/cargo/registry ]; then
    # offline: Debian's packaged crates, through a throw-away CARGO_HOME (the user's cargo settings stay untouched)
    export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup} CARGO_HOME="$ROOT/$DEST/.cargo" CARGO_NET_OFFLINE=true
    mkdir -p "$CARGO_HOME"
    printf '[source.debian]\ndirectory = "/usr/share/cargo/registry"\n[source.crates-io]\nreplace-with = "debian"\n' \
      >"$CARGO_HOME/config.toml"
  fi
  maturin build --release --quiet -o "$ROOT/$DEST" >/dev/null 2>&1
)
rm -rf "$DEST/.cargo"

ls -1 "$DEST"
echo "[wheels] $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
