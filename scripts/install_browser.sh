#!/usr/bin/env bash
# Install what the browser test of 'beet listen' needs: Debian's chromium
# (headless) and the node package playwright-core (no browser download) in
# .cache/browser. Safe to run again; exits non-zero when either cannot be
# installed, and the test then skips with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.cache/browser

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
command -v chromium >/dev/null

if [ ! -f "$DEST/node_modules/playwright-core/package.json" ]; then
    command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
    mkdir -p "$DEST"
    [ -f "$DEST/package.json" ] || echo '{"private": true}' > "$DEST/package.json"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$DEST" --no-audit --no-fund --silent playwright-core@1
fi
echo "chromium: $(command -v chromium); playwright-core: $DEST/node_modules/playwright-core"
