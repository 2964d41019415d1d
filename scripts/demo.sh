#!/usr/bin/env bash
# The offline demo of the main job, from a fresh checkout:
#   1. set up (ffmpeg, .venv, torch CPU, the plugin),
#   2. build a small Wav2Vec2 with random weights (no weights can be
#      downloaded here) and a library of generated music,
#   3. beet import it (the plugin embeds and fingerprints every track),
#   4. beet identify a degraded clip (noise, lossy re-encode, cut at an offset),
#   5. print a sounds-like playlist with beet similar.
# Everything lands in demo-out/ (or $DEMO_DIR); run it again to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

DEMO="${DEMO_DIR:-$PWD/demo-out}"
rm -rf "$DEMO"
mkdir -p "$DEMO/beets" "$DEMO/incoming"
PY=.venv/bin/python
BEET=.venv/bin/beet
export BEETSDIR="$DEMO/beets"

echo "== building a small Wav2Vec2 (random weights) in $DEMO/model"
$PY scripts/tiny_model.py "$DEMO/model" --layers 4 --hidden 64 2>/dev/null

echo "== generating 12 pieces of music in $DEMO/incoming"
$PY scripts/gen_audio.py "$DEMO/incoming" --count 12 --seconds 40 >/dev/null

cat > "$BEETSDIR/config.yaml" <<YAML
directory: $DEMO/music
library: $DEMO/beets/library.db
plugins: soundslike
create_backup_before_migrations: no
import:
  copy: yes
  write: no
  quiet: yes
paths:
  default: \$artist/\$album/\$title
soundslike:
  model: $DEMO/model
  layer: 3
YAML

echo "== beet import (embeds and fingerprints each track)"
$BEET import -A "$DEMO/incoming"
$BEET embed --status

echo
echo "== a degraded clip: 6 s of 'Piece 7' from 0:12, pink noise at 5 dB, AAC"
$PY scripts/degrade.py "$(ls "$DEMO"/incoming/*/*/piece07.*)" "$DEMO/clip.m4a" --start 12 --seconds 6 --snr 5
echo "== beet identify clip.m4a"
$BEET identify "$DEMO/clip.m4a"

echo
echo "== an unknown clip (music not in the library)"
$PY -c "import sys; sys.path.insert(0, 'scripts'); import gen_audio; gen_audio.write(gen_audio.piece(99, 8), '$DEMO/unknown.mp3')"
$BEET identify --similar 0 "$DEMO/unknown.mp3"

echo
echo "== beet similar 'title:Piece 3' -n 5 > playlist.m3u"
$BEET similar "title:Piece 3" -n 5 | tee "$DEMO/playlist.m3u"
