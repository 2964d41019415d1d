"""Shared fixtures: a small real Wav2Vec2, generated audio, and a beets
library with the plugin loaded.

Nothing is mocked: the model is a real (tiny, randomly initialised)
Wav2Vec2 saved to a folder and loaded with ``from_pretrained``; audio is
generated, encoded with ffmpeg and decoded by the plugin; the store is a
real Qdrant engine in a temporary folder; the library is a real beets
library on disk, driven through beets' own command runner.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_audio  # noqa: E402
import tiny_model  # noqa: E402

from beets import ui  # noqa: E402
from beets.test.helper import PluginMixin, TestHelper  # noqa: E402

FORMATS = [".mp3", ".m4a", ".flac", ".ogg", ".wav"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """A small Wav2Vec2 with random weights, saved like a real checkpoint."""
    path = tmp_path_factory.mktemp("tiny-wav2vec2")
    return tiny_model.build_tiny_model(str(path), layers=3, hidden=64)


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Generated pieces in every format, a near-duplicate of piece 0 and a
    few broken files."""
    out = tmp_path_factory.mktemp("audio")
    for seed in range(6):
        ext = FORMATS[seed % len(FORMATS)]
        gen_audio.write(gen_audio.piece(seed, 24.0), str(out / f"piece{seed}{ext}"),
                        channels=2 if seed % 2 else 1, tags=gen_audio.demo_tags(seed))
    # The same tune, low-passed and re-encoded at another rate: the obvious
    # nearest neighbour of piece 0.
    dup = gen_audio.lowpass(gen_audio.piece(0, 24.0), 5000.0)
    gen_audio.write(dup, str(out / "piece0-remaster.mp3"),
                    tags={"title": "Piece 0 (Remaster)", "artist": "Remaster Artist"})
    return out


def copy_pieces(audio_dir: Path, dest: Path, names: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(audio_dir / name, dest / name)
    return dest


class SoundsLikeHelper(PluginMixin, TestHelper):
    """A beets library on disk with the soundslike plugin configured to use
    the tiny model."""

    plugin = "soundslike"
    db_on_disk = True
    preload_plugin = False

    def setup_with(self, model_dir: str, **config) -> None:
        self.config["soundslike"].set({
            "model": model_dir, "layer": 2, "excerpts": 2, "excerpt_seconds": 4.0,
            **config,
        })
        self.config["import"].set({"copy": True, "write": False, "quiet": True})
        self.lib.path_formats = [("default", os.path.join("$artist", "$title"))]
        self.load_plugins()

    def reconfigure(self, **config) -> None:
        """Change plugin options and start a fresh plugin instance, as the
        next beet process would."""
        for key, value in config.items():
            self.config["soundslike"][key] = value
        self.unload_plugins()
        self.load_plugins()

    @property
    def soundslike(self):
        import beets.plugins

        return next(p for p in beets.plugins._instances if p.name == "soundslike")

    def beet(self, *args: str) -> str:
        """Run a beet command in-process and return what it printed."""
        buffer = io.StringIO()
        try:
            with redirect_stdout(buffer):
                self.run_command(*args)
        finally:
            self.output = buffer.getvalue()
        return self.output

    def import_dir(self, path: Path, *extra: str) -> None:
        self.beet("import", "-A", "-q", *extra, str(path))

    @property
    def settings(self):
        from beetsplug.soundslike.settings import load_settings

        return load_settings(self.config["soundslike"], self.lib.path)

    def store(self):
        from beetsplug.soundslike.store import open_store

        return open_store(self.settings)

    def fingerprints(self):
        from beetsplug.soundslike.fingerprint import FingerprintIndex

        return FingerprintIndex(self.settings.fingerprint_dir)


@pytest.fixture
def beets_env(model_dir):
    helper = SoundsLikeHelper()
    helper.setup_beets()
    try:
        helper.setup_with(model_dir)
        yield helper
    finally:
        helper.teardown_beets()
        helper.unload_plugins()


def user_error(helper: SoundsLikeHelper, *args: str) -> str:
    """Run a command that must fail with a UserError; return its message."""
    with pytest.raises(ui.UserError) as info:
        helper.beet(*args)
    return str(info.value)


class BeetProcess:
    """A real ``beet`` process (python -m beets) on a library in a temporary
    BEETSDIR: for kill -9, two processes at once, and exit statuses."""

    def __init__(self, root: Path, model_dir: str, **soundslike) -> None:
        import yaml

        self.root = root
        self.beetsdir = root / "beets"
        self.beetsdir.mkdir(parents=True, exist_ok=True)
        config = {
            "directory": str(root / "music"),
            "library": str(self.beetsdir / "library.db"),
            "plugins": ["soundslike"],
            "create_backup_before_migrations": False,
            "import": {"copy": True, "write": False, "quiet": True},
            "paths": {"default": "$artist/$title"},
            "soundslike": {
                "model": model_dir, "layer": 2, "excerpts": 2,
                "excerpt_seconds": 4.0, **soundslike,
            },
        }
        (self.beetsdir / "config.yaml").write_text(yaml.safe_dump(config))

    def env(self) -> dict:
        # PYTHONFAULTHANDLER: a process that hangs prints its threads'
        # stacks when a test sends it SIGABRT.
        env = dict(os.environ, BEETSDIR=str(self.beetsdir), HF_HUB_OFFLINE="1",
                   PYTHONFAULTHANDLER="1")
        env.pop("PYTEST_CURRENT_TEST", None)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "beets", *args]

    def run(self, *args: str, timeout: float = 300):
        import subprocess

        return subprocess.run(
            self.command(*args), env=self.env(), capture_output=True, text=True,
            timeout=timeout,
        )

    def popen(self, *args: str):
        import subprocess

        return subprocess.Popen(
            self.command(*args), env=self.env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )

    @property
    def store_dir(self) -> Path:
        return self.beetsdir / "soundslike"


@pytest.fixture
def plugin_log():
    """Lines the plugin logged (beets' own handler keeps whatever stderr it
    saw first, so capsys cannot be trusted for log lines)."""
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("beets")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
