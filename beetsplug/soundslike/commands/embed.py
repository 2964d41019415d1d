"""``beet embed``: analyse items (vectors and fingerprints), show how far
the analysis has come, repair drift, drop another model's collection."""

from __future__ import annotations

import contextlib

from beets import ui
from beets.ui import Subcommand

from .common import guarded, query_items

#: Tracks analysed, then stored, together: the model runs their excerpts
#: in batches of ``batch_size``.
BATCH_TRACKS = 8


def command(plugin) -> Subcommand:
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

    cmd.func = guarded(plugin, run)
    return cmd


def run(plugin, lib, opts, args) -> None:
    from .. import maintenance
    from ..progress import Progress
    from ..store import StoreError

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

    items = query_items(lib, opts, args)
    if opts.status:
        st = maintenance.status(indexer, lib, items)
        ui.print_(f"model: {settings.spec.describe()}")
        ui.print_(f"store: {settings.url or settings.store_dir}")
        ui.print_(f"items: {st.total}")
        ui.print_(f"embedded: {st.embedded}")
        ui.print_(f"fingerprinted: {st.fingerprinted}")
        ui.print_(f"missing: {st.missing}")
        ui.print_(f"failed: {st.failed}")
        for name, count in sorted(st.other_collections.items()):
            hint = f"beet embed --drop {name} to remove"
            if name.endswith(settings.spec.suffix) and st.missing:
                hint = f"'beet embed' takes it over if it holds this model's vectors; {hint}"
            ui.print_(f"other collection {name}: {count} points ({hint})")
        return

    found = indexer.audit(items, every=True)
    if not opts.pretend and not opts.force:
        # Vectors of this very model kept under another name join first.
        unembedded = {item.id for item in items} - found.usable_points()
        if unembedded and maintenance.merge_same_model(indexer, lib, unembedded):
            found = indexer.audit(items, every=True)
    todo = items if opts.force else found.todo
    if not opts.pretend:
        # Records of another file go, legacy records get their identity.
        indexer.settle(found)
    if not opts.pretend and not opts.force:
        # Catch up statuses a crash left behind (the store is the truth).
        maintenance.sync_mirror(indexer, lib, items, {item.id for item in found.todo},
                                failed=found.file_missing)
    if opts.pretend:
        for item in todo:
            ui.print_(format(item))
        ui.print_(f"{len(todo)} of {len(items)} item(s) would be analysed")
        return
    upgrade_index(plugin, indexer.fingerprints)
    if not todo:
        plugin.log.info("all {} item(s) are already analysed", len(items))
        return
    held = len(indexer.fingerprints) if indexer.fingerprints is not None else 0

    plugin.log.info(
        "analysing {} item(s) with {}", len(todo), settings.spec.describe()
    )
    first = fingerprints_first(plugin, indexer, lib, todo, found, opts.force)
    unread = {item.id for item, _ in first.failed}
    rest = [item for item in todo if item.id not in unread]
    report = first
    bar = None
    if rest and not first.stopped:
        bar = Progress(len(rest), label="embed")
        report = indexer.run(
            rest, progress=lambda done, item: bar.update(done), mark=plugin.mark,
            on_batch=plugin.link_recordings, batch_tracks=BATCH_TRACKS, force=opts.force, lib=lib,
            keep_fingerprints=True,
        )
        report.failed[:0] = first.failed
    if report.stopped:
        # The store is the truth: statuses of what the run did not reach.
        with contextlib.suppress(StoreError):
            left = indexer.audit(todo)
            maintenance.sync_mirror(indexer, lib, todo, {item.id for item in left.todo},
                                    failed=left.file_missing)
    if bar is not None:
        bar.finish()
    if report.embedded:
        plugin.build_search_index(indexer)
    if not report.stopped:
        pack_index(plugin, indexer.fingerprints, held)
    plugin.log.info(
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


def upgrade_index(plugin, fingerprints) -> None:
    """Rewrite a fingerprint index of an older layout in the current one,
    with a progress bar: from what it stores, no audio read, no model run
    (it answers the same as it is; writes would rewrite it a part at a
    time anyway)."""
    from ..progress import Progress

    older = fingerprints.older_parts() if fingerprints is not None else 0
    if not older:
        return
    plugin.log.info("rewriting {} part(s) of the fingerprint index in the current "
                    "layout (no audio is read)", older)
    bar = Progress(older, label="fingerprint index", unit="parts")
    fingerprints.upgrade(progress=bar.update)
    bar.finish()


def pack_index(plugin, fingerprints, held: int) -> None:
    """After a run that at least doubled the fingerprint index (a first
    analysis of a library, or of most of it), merge its segments into as
    few as hold them: a search reads every segment,
    and from a cold disk each one costs a set of reads a key (at 100,000
    tracks, one segment answers a cold ``beet identify`` in 0.8 s, ten in
    1.8 s). Packing only after a run that doubled the index makes every
    pack at least twice the size of the one before, so their total work
    stays within twice the index's size."""
    if fingerprints is None:
        return
    fingerprints.flush()
    now = len(fingerprints)
    if now < 2 * max(held, 1):
        return
    plugin.log.info("packing the fingerprint index of {} tracks", now)
    fingerprints.compact()


def fingerprints_first(plugin, indexer, lib, todo: list, found, force: bool):
    """The first phase of ``beet embed``: fingerprint every item that needs
    it before the model embeds any, so that ``beet identify`` knows the
    whole library minutes into a run that takes hours (fingerprinting runs
    at hundreds of times realtime, the model at a few). Skipped when no
    item needs the model (one pass does it all then). An interrupted run
    resumes here with what is still unprinted."""
    from ..indexer import RunReport
    from ..progress import Progress

    settings = indexer.settings
    usable, embedded = found.usable_prints(), found.usable_points()
    prints = [i for i in todo if force or i.id not in usable] if settings.fingerprint else []
    needs_model = force or any(i.id not in embedded for i in todo)
    if not prints or not needs_model:
        return RunReport()
    plugin.log.info("fingerprinting {} item(s) first", len(prints))
    bar = Progress(len(prints), label="fingerprint")
    report = indexer.run(
        prints, progress=lambda done, item: bar.update(done), mark=plugin.mark,
        on_batch=plugin.link_recordings, batch_tracks=BATCH_TRACKS, force=force, lib=lib,
        vectors=False,
    )
    bar.finish()
    return report
