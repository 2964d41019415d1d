"""The ``embed``, ``similar`` and ``identify`` subcommands.

Each handler parses options, resolves beets queries to items and hands the
work to the module that does it; output formatting lives here.
"""

from __future__ import annotations

import json
import sys

from beets import ui
from beets.ui import Subcommand



def build(plugin) -> list[Subcommand]:
    from .similar import build_command as similar_command
    from .listen import build_command as listen_command

    return [_embed_command(plugin), similar_command(plugin), _identify_command(plugin), listen_command(plugin)]


def fatal_errors() -> tuple[type[Exception], ...]:
    """Errors that end a command with one line (store, model, index)."""
    from .embedder import ModelError
    from .fpindex import FingerprintError
    from .store import StoreError

    return StoreError, ModelError, FingerprintError


# --------------------------------------------------------------------------
# beet embed
# --------------------------------------------------------------------------


def _embed_command(plugin) -> Subcommand:
    cmd = Subcommand(
        "embed",
        help="analyse items for soundslike (vectors and fingerprints)",
        aliases=("soundslike",),
    )
    cmd.parser.usage += (
        "\n\nAnalyse the items matching QUERY that are not analysed yet for the"
        "\nconfigured model: embed them with Wav2Vec2 into Qdrant and"
        "\nfingerprint them for 'beet identify'. Safe to interrupt and rerun."
    )
    cmd.parser.add_option(
        "-f", "--force", action="store_true", default=False,
        help="analyse again items that are already done",
    )
    cmd.parser.add_option(
        "-p", "--pretend", action="store_true", default=False,
        help="list the items that would be analysed, and do nothing",
    )
    cmd.parser.add_option(
        "-s", "--status", action="store_true", default=False,
        help="show how many items are embedded, missing and failed",
    )
    cmd.parser.add_option(
        "--check", action="store_true", default=False,
        help="find and repair drift between library and store "
             "(orphan points, stale paths, wrong status)",
    )
    cmd.parser.add_option(
        "--drop", metavar="COLLECTION", default=None,
        help="delete a collection of another model (see --status)",
    )
    cmd.parser.add_album_option()

    def func(lib, opts, args):
        plugin._lib = lib
        try:
            _embed(plugin, lib, opts, args)
        except fatal_errors() as exc:
            raise ui.UserError(f"soundslike: {exc}")
        finally:
            plugin.sync_index(lib)

    cmd.func = func
    return cmd


def _query_items(lib, opts, args) -> list:
    if getattr(opts, "album", False):
        return [item for album in lib.albums(args) for item in album.items()]
    return list(lib.items(args))


def _embed(plugin, lib, opts, args) -> None:
    from . import maintenance
    from .progress import Progress

    indexer = plugin.indexer(lib)
    settings = indexer.settings

    if opts.drop:
        if opts.drop == settings.spec.collection:
            raise ui.UserError(
                f"{opts.drop} is the collection of the configured model; "
                "change soundslike.model before dropping it"
            )
        if opts.drop not in indexer.store.collections():
            raise ui.UserError(f"no collection named {opts.drop}")
        indexer.store.drop(opts.drop)
        ui.print_(f"dropped {opts.drop}")
        return

    if opts.check:
        report = maintenance.check(indexer, lib, repair=not opts.pretend)
        for line in report.lines():
            ui.print_(line)
        if report.clean:
            ui.print_("store and library agree")
        elif opts.pretend:
            ui.print_("(pretend: nothing changed)")
        else:
            ui.print_("repaired" + (
                f"; run 'beet embed' for the {report.missing} missing item(s)"
                if report.missing else ""
            ))
        return

    items = _query_items(lib, opts, args)
    if opts.status:
        st = maintenance.status(indexer, items)
        ui.print_(f"model: {settings.spec.describe()}")
        ui.print_(f"store: {settings.url or settings.store_dir}")
        ui.print_(f"items: {st.total}")
        ui.print_(f"embedded: {st.embedded}")
        ui.print_(f"fingerprinted: {st.fingerprinted}")
        ui.print_(f"missing: {st.missing}")
        ui.print_(f"failed: {st.failed}")
        for name, count in sorted(st.other_collections.items()):
            ui.print_(f"other collection {name}: {count} points "
                      f"(beet embed --drop {name} to remove)")
        return

    todo = items if opts.force else indexer.missing(items)
    if not opts.pretend and not opts.force:
        # Catch up statuses a crash left behind (the store is the truth).
        maintenance.sync_mirror(indexer, lib, items, {item.id for item in todo})
    if opts.pretend:
        for item in todo:
            ui.print_(format(item))
        ui.print_(f"{len(todo)} of {len(items)} item(s) would be analysed")
        return
    if not todo:
        plugin._log.info("all {} item(s) are already analysed", len(items))
        return

    plugin._log.info(
        "analysing {} item(s) with {}", len(todo), settings.spec.describe()
    )
    bar = Progress(len(todo), label="embed")
    report = indexer.run(
        todo, progress=lambda done, item: bar.update(done), mark=plugin._mark,
        on_batch=plugin._link_recordings, batch_tracks=8, force=opts.force,
    )
    bar.finish()
    if report.embedded:
        plugin.build_search_index(indexer)
    plugin._log.info(
        "embedded {}, failed {}, left {}",
        report.embedded, len(report.failed),
        len(todo) - report.embedded - len(report.failed),
    )
    if report.stopped:
        raise ui.UserError(
            f"soundslike: {report.stopped}; "
            "finished items are kept, run 'beet embed' again to continue"
        )
    if report.failed:
        raise ui.UserError(
            f"soundslike: {len(report.failed)} item(s) could not be analysed "
            "(see above); list them with 'beet ls soundslike_status:failed'"
        )


# --------------------------------------------------------------------------
# beet identify
# --------------------------------------------------------------------------


def _identify_command(plugin) -> Subcommand:
    cmd = Subcommand(
        "identify", help="name the library track a recorded clip comes from"
    )
    cmd.parser.usage += (
        "\n\nFor each CLIP (any audio file) print the matching library track,"
        "\nwhere in it the clip sits and how sure the match is, then tracks"
        "\nthat sound alike."
    )
    cmd.parser.usage = cmd.parser.usage.replace("[options]", "[options] CLIP...")
    cmd.parser.add_option(
        "--similar", type="int", default=None, metavar="N",
        help="also suggest N tracks in the same vibe (default: soundslike.similar)",
    )
    cmd.parser.add_option(
        "--json", action="store_true", default=False,
        help="print one JSON object per clip",
    )
    cmd.parser.add_format_option(target="item")

    def func(lib, opts, args):
        plugin._lib = lib
        from .identify import identify_command

        try:
            ok = identify_command(plugin, lib, opts, args)
        except fatal_errors() as exc:
            raise ui.UserError(f"soundslike: {exc}")
        if not ok:
            raise ui.UserError("soundslike: some clips could not be read (see above)")

    cmd.func = func
    return cmd


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()
