"""The plugin's configuration: defaults, validation and derived names.

Every option has its default in :data:`DEFAULTS` (the plugin adds them all
at once) and is checked here into frozen settings: :class:`Settings` (model,
store, fingerprints), :class:`PlaylistSettings` (``beet similar`` and the
suggestions of ``identify``/``listen``) and :class:`ListenSettings`
(``beet listen``). A bad value is a :class:`ConfigError` naming the option.
Nothing here imports torch, so commands that only read the store start fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Flexible attributes that mirror the store, queryable with ``beet ls``.
STATUS_FIELD = "soundslike_status"
RECORDING_FIELD = "soundslike_recording"

#: Defaults merged into the ``soundslike:`` section of config.yaml.
DEFAULTS = {
    "auto": True,
    # Model: a Hugging Face hub id or a local folder saved by
    # ``save_pretrained``; any Wav2Vec2-family checkpoint.
    "model": "facebook/wav2vec2-large-xlsr-53",
    "layer": 12,
    "pooling": "mean",
    "device": "auto",
    "quantize": False,
    # CPU model runtime: auto (onnx where onnxruntime is installed), onnx
    # (int8 ONNX Runtime, see runtime.py) or torch (the reference).
    "runtime": "auto",
    # Cost per track: this many excerpts of this many seconds are embedded
    # (30 s of audio: ~13 s per track with the large model on 2 CPU cores).
    "excerpts": 3,
    "excerpt_seconds": 10.0,
    "batch_size": 8,
    # Store: embedded by default, next to the library; url: for a server.
    "store_dir": "",
    "url": "",
    "api_key": "",
    "timeout": 10,
    # Identification.
    "fingerprint": True,
    "max_fingerprint_minutes": 60,
    "similar": 5,
    # Playlists.
    "count": 10,
    "max_per_artist": 0,
    "max_per_album": 0,
    # A beets query for tracks never to suggest, e.g. 'genre:audiobook'.
    "exclude": "",
    # M3U paths for players on other devices (as in smartplaylist).
    "relative_to": "",
    "prefix": "",
    # Mixes kept current (beet mixes): the folder players read and the
    # mixes, each {name, query} and any beet similar option by long name.
    "playlist_dir": "",
    "mixes": [],
    # beet listen: the web server for a phone (see docs/listen.md).
    "listen_host": "127.0.0.1",
    "listen_port": 8338,
    "listen_token": "",
    "listen_seconds": 8,
    "listen_tls_cert": "",
    "listen_tls_key": "",
}

POOLINGS = ("mean", "meanstd")
DEVICES = ("auto", "cpu", "cuda", "mps")
RUNTIMES = ("auto", "torch", "onnx")


class ConfigError(Exception):
    """A configuration value that cannot work; the message names the option."""


@dataclass(frozen=True)
class ModelSpec:
    """Which vectors a collection holds: vectors of different specs never mix."""

    model: str
    layer: int
    pooling: str

    @property
    def collection(self) -> str:
        """Qdrant collection name for this (model, layer, pooling)."""
        return f"soundslike_{model_slug(self.model)}{self.suffix}"

    @property
    def legacy_collection(self) -> str | None:
        """The collection name earlier versions gave a local folder (by its
        path, :func:`path_slug`), or None for a hub id."""
        if local_folder(self.model) is None:
            return None
        return f"soundslike_{path_slug(self.model)}{self.suffix}"

    @property
    def suffix(self) -> str:
        """How the name of every collection of this layer and pooling
        ends, whatever the model."""
        return f"_l{self.layer}_{self.pooling}"

    def describe(self) -> str:
        return f"{self.model} (layer {self.layer}, {self.pooling} pooling)"


#: The files of a local model folder that decide its vectors: configuration
#: (the feature extractor's too: normalisation changes every vector) and
#: weights, in any of the formats ``from_pretrained`` reads.
MODEL_FILES = re.compile(
    r"^(?:(?:preprocessor_)?config\.json|.*\.(?:safetensors|bin|pt|pth|msgpack|h5|ckpt)"
    r"|.*\.index\.json)$"
)
#: How much of each such file the content digest reads: a few pieces spread
#: over it, so that a 1.2 GB checkpoint costs a millisecond, not a second.
DIGEST_PIECES = 16
DIGEST_PIECE_BYTES = 4096


def model_slug(model: str) -> str:
    """A short, stable, collection-safe name for a hub id or a local folder.

    A local folder is named by its kind of model (``model_type`` in its
    configuration) and a digest of its content (:func:`folder_digest`):
    moving, renaming or copying the folder keeps its vectors, and two
    different folders called ``model`` never share a collection.
    """
    path = local_folder(model)
    return _slugged(model if path is None else f"{_model_type(path)}-{folder_digest(path)[:8]}")


def path_slug(model: str) -> str:
    """A name by place: a local folder by its last path component plus a
    hash of its absolute path, a hub id as it is. It names the cached ONNX
    exports (which also carry a digest of the weights), and earlier
    versions named the collections by it: it is read to rename those
    (:attr:`ModelSpec.legacy_collection`)."""
    path = local_folder(model)
    if path is None:
        return _slugged(model)
    base = os.path.basename(path.rstrip(os.sep)) or "model"
    digest = hashlib.sha1(path.encode("utf-8")).hexdigest()[:8]
    return _slugged(f"{base}-{digest}")


def local_folder(model: str) -> str | None:
    """The absolute path of ``model`` when it names a folder here, else
    None (a hub id)."""
    path = os.path.expanduser(model)
    return os.path.abspath(path) if os.path.isdir(path) else None


def folder_digest(path: str) -> str:
    """A digest of the files of a model folder that decide its vectors
    (:data:`MODEL_FILES`): their names, sizes and pieces of their bytes.
    Remembered per process while no such file changes size or time."""
    signature = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not MODEL_FILES.match(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                info = entry.stat()
            except OSError:
                continue
            signature.append((entry.name, info.st_size, info.st_mtime_ns))
    return _sampled_digest(path, tuple(sorted(signature)))


@functools.lru_cache(maxsize=16)
def _sampled_digest(path: str, signature: tuple) -> str:
    digest = hashlib.sha256()
    whole = DIGEST_PIECES * DIGEST_PIECE_BYTES
    for name, size, _mtime in signature:
        digest.update(f"{name}\0{size}\0".encode("utf-8"))
        try:
            with open(os.path.join(path, name), "rb") as handle:
                if size <= whole:
                    digest.update(handle.read())
                    continue
                last = size - DIGEST_PIECE_BYTES
                for k in range(DIGEST_PIECES):
                    handle.seek(last * k // (DIGEST_PIECES - 1))
                    digest.update(handle.read(DIGEST_PIECE_BYTES))
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def _model_type(path: str) -> str:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
            kind = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        kind = None
    return kind if isinstance(kind, str) and kind else "model"


def _slugged(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-").lower()


@dataclass(frozen=True)
class Settings:
    """Validated plugin configuration."""

    spec: ModelSpec
    device: str
    quantize: bool
    excerpts: int
    excerpt_seconds: float
    batch_size: int
    store_dir: Path
    url: str
    api_key: str
    timeout: float
    fingerprint: bool
    max_fingerprint_seconds: float
    runtime: str = "auto"

    @property
    def onnx_dir(self) -> Path:
        """Where the ONNX runtime caches its export of the model."""
        return self.store_dir / "onnx"

    @property
    def fingerprint_dir(self) -> Path:
        return self.store_dir / "fingerprints"


def load_settings(config, library_path: str | bytes | None) -> Settings:
    """Read and check the plugin's ``config`` view.

    Raises :class:`ConfigError` with the option's name for a bad value.
    """
    model = config["model"].as_str().strip()
    if not model:
        raise ConfigError("soundslike.model is empty: set a hub id or a folder")
    try:
        layer = int(config["layer"].get())
    except (TypeError, ValueError):
        raise ConfigError("soundslike.layer must be a whole number")
    if layer < 0:
        raise ConfigError("soundslike.layer must be 0 or more")
    pooling = config["pooling"].as_str()
    if pooling not in POOLINGS:
        raise ConfigError(
            f"soundslike.pooling must be one of {', '.join(POOLINGS)}, "
            f"not {pooling!r}"
        )
    device = config["device"].as_str()
    if device not in DEVICES:
        raise ConfigError(
            f"soundslike.device must be one of {', '.join(DEVICES)}, "
            f"not {device!r}"
        )
    runtime = config["runtime"].as_str()
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"soundslike.runtime must be one of {', '.join(RUNTIMES)}, "
            f"not {runtime!r}"
        )
    excerpts = int(config["excerpts"].get())
    excerpt_seconds = float(config["excerpt_seconds"].get())
    if excerpts < 1 or excerpt_seconds < 1:
        raise ConfigError(
            "soundslike.excerpts must be >= 1 and excerpt_seconds >= 1"
        )

    store_dir = config["store_dir"].as_str().strip()
    if store_dir:
        store = Path(os.path.expanduser(store_dir))
    else:
        store = default_store_dir(library_path)

    return Settings(
        spec=ModelSpec(model=model, layer=layer, pooling=pooling),
        device=device,
        quantize=bool(config["quantize"].get()),
        excerpts=excerpts,
        excerpt_seconds=excerpt_seconds,
        batch_size=max(1, int(config["batch_size"].get())),
        store_dir=store,
        url=config["url"].as_str().strip(),
        api_key=config["api_key"].as_str().strip(),
        timeout=float(config["timeout"].get()),
        fingerprint=bool(config["fingerprint"].get()),
        max_fingerprint_seconds=60.0
        * float(config["max_fingerprint_minutes"].get()),
        runtime=runtime,
    )


def default_store_dir(library_path: str | bytes | None) -> Path:
    """``soundslike/`` beside the beets library database."""
    if isinstance(library_path, bytes):
        library_path = os.fsdecode(library_path)
    if not library_path or library_path == ":memory:":
        from beets import config as beets_config

        return Path(beets_config.config_dir()) / "soundslike"
    return Path(os.path.abspath(os.path.expanduser(library_path))).parent / (
        "soundslike"
    )


@dataclass(frozen=True)
class PlaylistSettings:
    """Validated playlist options: ``beet similar``'s defaults and the number
    of same-vibe suggestions ``identify`` and ``listen`` give."""

    count: int
    max_per_artist: int
    max_per_album: int
    exclude: str
    relative_to: str | None
    prefix: str
    similar: int


def load_playlist_settings(config) -> PlaylistSettings:
    """Read and check the playlist options of the plugin's ``config`` view."""
    return PlaylistSettings(
        count=whole_number(config, "count", 1),
        max_per_artist=whole_number(config, "max_per_artist", 0),
        max_per_album=whole_number(config, "max_per_album", 0),
        exclude=config["exclude"].as_str().strip(),
        relative_to=config["relative_to"].as_str() or None,
        prefix=config["prefix"].as_str(),
        similar=whole_number(config, "similar", 0),
    )


@dataclass(frozen=True)
class MixSettings:
    """Validated mixes (``beet mixes``): the folder and the checked entries
    (:class:`~.mixes.Mix`)."""

    playlist_dir: Path | None
    mixes: tuple


def load_mix_settings(config, keys) -> MixSettings:
    """Read and check ``playlist_dir`` and ``mixes``; ``keys`` maps each key
    a mix may hold (``beet similar``'s options by long name) to its
    :class:`~.mixes.OptionSpec`."""
    from .mixes import MixConfigError, parse_mixes

    try:
        mixes = parse_mixes(config["mixes"].get(), keys)
    except MixConfigError as exc:
        raise ConfigError(str(exc))
    folder = config["playlist_dir"].as_str().strip()
    if mixes and not folder:
        raise ConfigError(
            "soundslike.playlist_dir is not set: name the folder the mixes are "
            "written to"
        )
    return MixSettings(
        playlist_dir=Path(os.path.expanduser(folder)) if folder else None,
        mixes=tuple(mixes),
    )


@dataclass(frozen=True)
class ListenSettings:
    """Validated options of ``beet listen``."""

    host: str
    port: int
    token: str
    seconds: float
    tls_cert: str | None
    tls_key: str | None


def load_listen_settings(config) -> ListenSettings:
    """Read and check the ``listen_*`` options of the plugin's ``config`` view."""
    port = whole_number(config, "listen_port", 0)
    if port > 65535:
        raise ConfigError("soundslike.listen_port must be a whole number from 0 to 65535")
    try:
        seconds = float(config["listen_seconds"].get())
    except (TypeError, ValueError):
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError("soundslike.listen_seconds must be a number of seconds > 0")
    return ListenSettings(
        host=config["listen_host"].as_str().strip() or "127.0.0.1",
        port=port,
        token=config["listen_token"].as_str().strip(),
        seconds=seconds,
        tls_cert=config["listen_tls_cert"].as_str().strip() or None,
        tls_key=config["listen_tls_key"].as_str().strip() or None,
    )


def whole_number(config, name: str, minimum: int) -> int:
    """Option ``name`` as an int of at least ``minimum``, or a
    :class:`ConfigError` that names it."""
    value = config[name].get()
    try:
        if isinstance(value, bool):
            raise TypeError(name)
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ConfigError(f"soundslike.{name} must be a whole number >= {minimum}")
    return number
