#!/usr/bin/env bash
# Headless browser for the web-UI test and the screenshot: Debian's Chromium (apt) driven by Playwright for
# Python (pip). Playwright's own browser download is not needed: the tests launch /usr/bin/chromium.
# Best effort: without root or apt the browser test skips itself; nothing else depends on this.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
            || { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; } \
            || echo "[install_browser] apt could not install chromium; the browser test will skip"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
            || echo "[install_browser] apt could not install chromium; the browser test will skip"
    else
        echo "[install_browser] no root/apt: install chromium yourself (apt-get install chromium); the browser test will skip"
    fi
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q playwright \
        || echo "[install_browser] pip could not install playwright; the browser test will skip"
fi
[ -x /usr/bin/chromium ] && echo "[install_browser] $(/usr/bin/chromium --version 2>/dev/null | head -1)"
exit 0
