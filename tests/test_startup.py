"""Commands that only read the store start fast: ``beet similar`` and
``beet identify`` (without suggestions for an unknown clip) never import
torch or transformers, and loading the plugin imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

from conftest import FORMATS, BeetProcess, copy_pieces, gen_audio

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(3)]

PROBE = """
import sys
from beets import ui
try:
    ui._raw_main(sys.argv[1:])
finally:
    heavy = sorted(m for m in ("torch", "transformers", "librosa") if m in sys.modules)
    print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


def heavy_modules(beet: BeetProcess, *args: str) -> tuple[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env=beet.env(), capture_output=True,
        text=True, timeout=120,
    )
    line = [l for l in result.stderr.splitlines() if l.startswith("HEAVY:")][-1]
    return line[len("HEAVY:"):], result.stdout


def test_similar_and_identify_do_not_import_torch(model_dir, audio_dir, tmp_path):
    beet = BeetProcess(tmp_path, model_dir)
    incoming = copy_pieces(audio_dir, tmp_path / "in", PIECES)
    assert beet.run("import", "-A", "-q", str(incoming)).returncode == 0

    heavy, out = heavy_modules(beet, "similar", "title:Piece 0", "-n", "2")
    assert heavy == "" and out.startswith("#EXTM3U")

    clip = tmp_path / "clip.wav"
    gen_audio.write(gen_audio.piece(1, 24.0)[22050 * 5: 22050 * 11], str(clip))
    heavy, out = heavy_modules(beet, "identify", str(clip))
    assert heavy == "" and "Piece 1" in out and "same vibe" in out

    heavy, out = heavy_modules(beet, "ls")
    assert heavy == "" and len(out.splitlines()) == 3


FROZEN = """
import atexit, gc, sys
atexit.register(lambda: print("FROZEN:%d" % gc.get_freeze_count(), file=sys.stderr))
{main}
"""


def test_beet_skips_the_final_collection_and_beets_as_a_library_keeps_it(
        model_dir, audio_dir, tmp_path):
    """At the end of ``beet identify`` the objects left are frozen (the
    interpreter's final collection passes skip them), but only in beets'
    own command line, not where beets runs as a library."""
    beet = BeetProcess(tmp_path, model_dir)
    incoming = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
    assert beet.run("import", "-A", "-q", str(incoming)).returncode == 0
    clip = tmp_path / "clip.wav"
    gen_audio.write(gen_audio.piece(1, 24.0)[22050 * 5: 22050 * 11], str(clip))
    frozen = {}
    for kind, main in (("command line", "from beets.ui import main\nmain()"),
                       ("library", "from beets import ui\nui._raw_main(sys.argv[1:])")):
        result = subprocess.run(
            [sys.executable, "-c", FROZEN.format(main=main), "identify", "--similar", "0",
             str(clip)], env=beet.env(), capture_output=True, text=True, timeout=120,
        )
        assert "Piece 1" in result.stdout, result.stderr[-2000:]
        line = [l for l in result.stderr.splitlines() if l.startswith("FROZEN:")][-1]
        frozen[kind] = int(line.split(":")[1])
    assert frozen["command line"] > 10_000 and frozen["library"] == 0
