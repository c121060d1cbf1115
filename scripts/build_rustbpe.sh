#!/usr/bin/env bash
# Build the nanochat_rustbpe extension (rustbpe/) and install it into the current Python env.
#
#   scripts/build_rustbpe.sh            build + install (release)
#   scripts/build_rustbpe.sh --test     also run the Rust unit tests
#
# PYTHON selects the interpreter (default: .venv/bin/python if present, else python3).
# Online, crates come from crates.io. When crates.io cannot be reached and Debian's packaged
# crates are installed (apt-get install librust-pyo3-dev librust-rayon-dev librust-fancy-regex-dev
# librust-ahash-dev librust-indexmap-dev), cargo is pointed at them through
# $CARGO_HOME/config.toml (outside the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
RUN_TESTS=0
for arg in "$@"; do
    case "$arg" in
        --test) RUN_TESTS=1 ;;
        *) echo "unknown option: $arg" >&2; exit 2 ;;
    esac
done

# the maturin build backend runs the `maturin` executable installed next to the interpreter
PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

crates_io_reachable() {
    "$PYTHON" - <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen("https://index.crates.io/config.json", timeout=5)
except Exception:
    sys.exit(1)
EOF
}

DEBIAN_REGISTRY=/usr/share/cargo/registry
if ! crates_io_reachable; then
    if [[ -d "$DEBIAN_REGISTRY" ]]; then
        CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
        CONFIG="$CARGO_HOME/config.toml"
        mkdir -p "$CARGO_HOME"
        if [[ -f "$CONFIG" ]] && grep -q '^\[source\.crates-io\]' "$CONFIG"; then
            echo "crates.io unreachable; using the existing crate source settings in $CONFIG"
        else
            echo "crates.io unreachable; using Debian's crates from $DEBIAN_REGISTRY (via $CONFIG)"
            cat >>"$CONFIG" <<EOF

[source.debian-packages]
directory = "$DEBIAN_REGISTRY"

[source.crates-io]
replace-with = "debian-packages"
EOF
        fi
        export CARGO_NET_OFFLINE=true
    else
        echo "warning: crates.io unreachable and no packaged crates in $DEBIAN_REGISTRY; trying anyway" >&2
    fi
fi

cd "$ROOT/rustbpe"
if [[ "$RUN_TESTS" == 1 ]]; then
    cargo test --release --no-default-features
fi

if "$PYTHON" -c "import maturin" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --no-build-isolation --no-deps --force-reinstall "$ROOT/rustbpe"
else
    "$PYTHON" -m pip install --no-deps --force-reinstall "$ROOT/rustbpe"
fi
"$PYTHON" -c "import nanochat_rustbpe as m; print('nanochat_rustbpe', m.__version__, 'installed')"
