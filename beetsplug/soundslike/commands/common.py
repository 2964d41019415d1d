"""What every command shares: the one wrapper that turns fatal errors into
one ``soundslike: ...`` line, and small helpers for queries and output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from beets import ui


def fatal_errors() -> tuple[type[Exception], ...]:
    """Errors that end a command with one line (store, model, index,
    playlist)."""
    from ..embedder import ModelError
    from ..fingerprint import FingerprintError
    from ..playlist import PlaylistError
    from ..store import StoreError

    return StoreError, ModelError, FingerprintError, PlaylistError


def guarded(plugin, run: Callable) -> Callable:
    """The ``func`` of a subcommand: ``run(plugin, lib, opts, args)`` with
    fatal errors turned into ``soundslike: <reason>``, and the library
    changes the command made passed on to the store at the end."""

    def func(lib, opts, args) -> None:
        plugin.lib = lib
        try:
            run(plugin, lib, opts, args)
        except fatal_errors() as exc:
            raise ui.UserError(f"soundslike: {exc}")
        finally:
            plugin.sync_index(lib)

    return func


def query_items(lib, opts, args) -> list:
    """The items ``args`` match, or the items of the albums it matches with
    ``-a``."""
    if getattr(opts, "album", False):
        return [item for album in lib.albums(args) for item in album.items()]
    return list(lib.items(args))


def identifier_for(plugin, lib):
    """The :class:`~..identify.Identifier` of ``beet identify`` and ``beet
    listen``; the model loads only if a clip needs it."""
    from ..identify import NoFingerprints, open_identifier

    try:
        return open_identifier(
            plugin.settings(lib), lib, lambda: plugin.indexer(lib).embedder, log=plugin.log
        )
    except NoFingerprints as exc:
        raise ui.UserError(str(exc))


def print_json(obj) -> None:
    """One JSON object on a line of stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
