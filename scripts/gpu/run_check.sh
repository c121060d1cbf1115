#!/usr/bin/env bash
# Run bench/gpu_check.py on a GPU machine without network, in one call, from a copy of this checkout that carries
# the wheels scripts/gpu/prepare_wheels.sh put in .whl/:
#   bash scripts/gpu/run_check.sh                  # results in ${OUT:-gpu_check_out}: gpu_check.{json,md,log}
#   bash scripts/gpu/run_check.sh --dry-run        # the tiny CPU pass (any machine)
# Extra arguments go to bench/gpu_check.py (--budget SECONDS, --only SECTION ...).
# Environment: PYTHON (default python3), WHEELS (default .whl; empty = install nothing), SITE (default
# /tmp/nanochat_site), NANOCHAT_BASE_DIR (default /tmp/nanochat_base: caches, the tokenizer, the peak probe).
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS-.whl}
SITE=${SITE:-/tmp/nanochat_site}
OUT_DIR=${OUT:-gpu_check_out}

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # --no-deps: the machine's own torch, numpy, lightning stay; only what it lacks comes from the wheels
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || { echo "run_check: installing $WHEELS/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# nanochat itself runs from this checkout (no install needed)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NANOCHAT_BASE_DIR=${NANOCHAT_BASE_DIR:-/tmp/nanochat_base}
export NANOCHAT_OUTPUTS=${NANOCHAT_OUTPUTS:-/tmp/nanochat_outputs}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
"$PYTHON" -c 'import torch, lightning, hydra, omegaconf, fastapi, uvicorn, openai, nanochat_rustbpe' \
  || { echo "run_check: a package is missing (see above); run scripts/gpu/prepare_wheels.sh and carry .whl" >&2; exit 1; }
exec "$PYTHON" bench/gpu_check.py --out "$OUT_DIR" "$@"
