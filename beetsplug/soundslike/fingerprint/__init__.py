"""Landmark audio fingerprints: which recording a clip comes from, where
in it, at what speed.

The pipeline, one module per stage (every tunable in :mod:`.params`):

1. :mod:`.spectrum`   audio at the analysis rate, its log spectrogram
2. :mod:`.landmarks`  spectrogram peaks, their hashed pairs and the
   pairs' speed-invariant keys
3. :mod:`.match`      candidates, verification, confidence; with
   :mod:`.speed` (each candidate's speed, read back from the keys) and
   :mod:`.voting` (offset votes, shared by every stage)
4. :mod:`.audiocheck` the clip against the tracks' own audio: the second
   look at uncertain matches; :mod:`.placement` the place in the track
5. :mod:`.versions`   the recording itself, or another version of it

The landmarks of every library track are kept by one of two backends
behind one interface (:class:`.backend.FingerprintBackend`): the local
index in a folder beside the library (:mod:`.local`), or the Qdrant
server the vectors use (:mod:`.server`). :func:`open_fingerprints` is
the one place that chooses between them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .audiocheck import read_stretch, second_look
from .backend import FingerprintBackend
from .landmarks import reference_landmarks
from .local import FingerprintIndex
from .match import Candidate, ClipTooShort, FingerprintError, IndexVersionError, Match
from .params import (
    FINGERPRINT_VERSION,
    MAX_CLIP_SECONDS,
    MIN_CLIP_SECONDS,
    MIN_CONFIDENCE,
    MIN_SCORE,
    SECOND_LOOK_CANDIDATES,
)
from .placement import audio_at, place_and_audio
from .versions import Deficits, Holes, deficits, holes

__all__ = [
    "FINGERPRINT_VERSION",
    "MAX_CLIP_SECONDS",
    "MIN_CLIP_SECONDS",
    "MIN_CONFIDENCE",
    "MIN_SCORE",
    "SECOND_LOOK_CANDIDATES",
    "Candidate",
    "ClipTooShort",
    "Deficits",
    "FingerprintBackend",
    "FingerprintError",
    "FingerprintIndex",
    "Holes",
    "IndexVersionError",
    "Match",
    "deficits",
    "holes",
    "audio_at",
    "open_fingerprints",
    "place_and_audio",
    "read_stretch",
    "reference_landmarks",
    "second_look",
]


def open_fingerprints(settings, store=None, rebuild: bool = False) -> FingerprintBackend:
    """The fingerprint index the settings ask for: beside the library by
    default, on the Qdrant server with ``url:`` (``store``, the
    :class:`store.ServerStore` the vectors use, shares its connection).

    A local index written by another format or fingerprint version raises
    :class:`IndexVersionError`; with ``rebuild`` (what analysing tracks
    asks for) it is set aside and a new one started instead: items
    lacking fingerprints are then redone by ``beet embed``, without
    running the model again."""
    if settings.url:
        from ..store import ServerStore
        from .server import ServerFingerprints

        if not isinstance(store, ServerStore):
            store = ServerStore(settings.url, settings.api_key or None, settings.timeout)
        return ServerFingerprints(store)
    folder = Path(settings.fingerprint_dir)
    try:
        return FingerprintIndex(folder, timeout=settings.timeout)
    except IndexVersionError:
        if not rebuild:
            raise
    from beets import logging

    logging.getLogger("beets.soundslike").warning(
        "the fingerprint index format changed with this version: "
        "rebuilding fingerprints ('beet embed' finishes the job)"
    )
    outdated = folder.with_name(folder.name + ".outdated")
    shutil.rmtree(outdated, ignore_errors=True)
    os.replace(folder, outdated)
    index = FingerprintIndex(folder, timeout=settings.timeout)
    shutil.rmtree(outdated, ignore_errors=True)
    return index
