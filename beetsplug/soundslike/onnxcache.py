"""Open the cached ONNX export of a model without torch or transformers.

Loading a checkpoint through transformers costs seconds before the first
vector: importing torch and transformers alone takes 3 to 4 s on a laptop
core, and ``from_pretrained`` then reads every float weight (1.2 GB for
wav2vec2-large), only for :mod:`.runtime` to find that the int8 export it
made on an earlier run is already in the cache. Every ``beet import`` paid
that, and so did ``beet identify`` for a clip that is not in the library.

So each export gets a small *record* beside it (``onnx/records/``), named
by everything the export was made from: the content of the model's files
(:func:`.settings.folder_digest` of the local folder, or of the hub model's
snapshot in the Hugging Face cache), the layer, the onnxruntime version,
:data:`.runtime.FORMAT` and the quantisation. It holds what the embedder
would otherwise read from the checkpoint: the export's file, whether the
feature extractor normalises, and the hidden size. With a record the
embedder opens the export at once; without one (a first run, other weights
saved into the folder, a new onnxruntime) it loads the model as before and
writes the record after the export. A record whose export has gone, or
that does not open, is passed over: the slow path is always there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from beets import logging

from .files import write_atomic
from .runtime import FORMAT, OnnxEncoder, onnxruntime_version, reduce_range
from .settings import ModelSpec, folder_digest, local_folder

log = logging.getLogger("beets.soundslike")

#: The records' folder, inside the export cache.
RECORDS = "records"


def model_folder(model: str) -> str | None:
    """The folder that holds the model's files: a local folder, a hub
    model's cached snapshot, or None (a hub model not downloaded yet)."""
    path = local_folder(model)
    if path is not None:
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - not a hub id, an unreadable cache: no record
        return None
    return os.path.dirname(config) if isinstance(config, str) else None


def record_path(cache_dir: Path, spec: ModelSpec) -> Path | None:
    """Where the record of this model's export lives, or None when the
    model's files cannot be found here."""
    folder = model_folder(spec.model)
    if folder is None:
        return None
    kind = "int8r" if reduce_range() else "int8"
    name = (f"{folder_digest(folder)[:24]}_l{spec.layer}"
            f"_ort{onnxruntime_version()}_f{FORMAT}_{kind}.json")
    return cache_dir / RECORDS / name


def open_cached(cache_dir: Path, spec: ModelSpec) -> tuple[OnnxEncoder, bool, int] | None:
    """(the encoder, whether excerpts are normalised, the hidden size)
    from this model's record, or None: no record, or its export is gone
    or does not open."""
    try:
        path = record_path(cache_dir, spec)
        if path is None or not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        name = str(record["onnx"])
        if os.path.basename(name) != name:  # only a file of this cache
            return None
        export = cache_dir / name
        normalize, hidden = bool(record["normalize"]), int(record["hidden"])
        if not export.is_file():
            return None
        encoder = OnnxEncoder(export)
    except Exception as exc:  # noqa: BLE001 - any doubt: load the model instead
        log.debug("the cached export of {} is not used: {}", spec.model, exc)
        return None
    width = encoder.session.get_outputs()[0].shape[-1]
    if isinstance(width, int) and width != hidden:
        log.debug("the cached export of {} is not used: {} wide, not {}",
                  spec.model, width, hidden)
        return None
    log.debug("opened the cached export of {} ({})", spec.model, export.name)
    return encoder, normalize, hidden


def remember(cache_dir: Path, spec: ModelSpec, export: Path, normalize: bool,
             hidden: int) -> None:
    """Write the record of ``export`` (a file in ``cache_dir``), so that
    the next process opens it without loading the model; records of
    exports that are gone are removed. A failure costs only speed."""
    try:
        path = record_path(cache_dir, spec)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"onnx": export.name, "normalize": normalize, "hidden": hidden,
                  "model": spec.model}
        write_atomic(path, json.dumps(record, indent=1) + "\n")
        for other in path.parent.glob("*.json"):
            try:
                gone = not (cache_dir / json.loads(other.read_text("utf-8"))["onnx"]).is_file()
            except (OSError, ValueError, KeyError, TypeError):
                gone = True
            if gone:
                other.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("no record of the export of {}: {}", spec.model, exc)
