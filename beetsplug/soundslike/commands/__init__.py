"""The plugin's subcommands, one module each, all built the same way:
``command(plugin)`` returns the :class:`~beets.ui.Subcommand`, whose
options default to the validated settings, and ``run(plugin, lib, opts,
args)`` does the work behind :func:`.common.guarded`.

Only beets' ui is imported here: each command imports what does its work
when it runs, so loading the plugin (``beet ls``) stays fast.
"""

from __future__ import annotations

from beets.ui import Subcommand

from . import embed, identify, listen, mixes, radio, similar


def build(plugin) -> list[Subcommand]:
    """``embed``, ``similar``, ``identify``, ``listen``, ``mixes`` and
    ``radio``."""
    return [
        embed.command(plugin),
        similar.command(plugin),
        identify.command(plugin),
        listen.command(plugin),
        mixes.command(plugin),
        radio.command(plugin),
    ]
