#!/usr/bin/env bash
# Set up everything beets-soundslike needs on a fresh Debian/Ubuntu machine:
# ffmpeg (to encode test audio), mpd (for the tests of beet radio), a virtualenv in .venv,
# the CPU build of torch, then the project itself. Safe to run again: it
# skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# ffmpeg encodes the generated audio of the demo and the tests (the plugin
# decodes with PyAV, a pip package); mpd is the real Music Player Daemon the tests of
# 'beet radio' start (its own temporary config, never the system service).
MISSING=""
command -v ffmpeg >/dev/null 2>&1 || MISSING="$MISSING ffmpeg"
command -v mpd >/dev/null 2>&1 || [ -x /usr/bin/mpd ] || MISSING="$MISSING mpd"
if [ -n "$MISSING" ]; then
  echo "setup: installing$MISSING" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
LOG=".venv/setup.log"
pip_install() {
  # Quiet on success; the whole pip log on failure.
  if ! .venv/bin/pip install --disable-pip-version-check "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
}
# torch first, pinned: a bare 'torch' requirement pulls a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch 2.13.0 (CPU build)" >&2
  pip_install "torch==2.13.0"
fi
echo "setup: installing beets-soundslike and its dependencies" >&2
pip_install -e ".[test]"
.venv/bin/python -c "import beetsplug.soundslike, torch, transformers, qdrant_edge, qdrant_client" \
  || { echo "setup: the install is incomplete" >&2; exit 1; }
