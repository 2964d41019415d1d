"""Keep the store consistent with the library.

The library is the truth about which items exist and where their files
are; the store is the truth about what has been analysed; the
``soundslike_status`` attribute mirrors the store so ``beet ls`` can query
it. These functions move changes from one to the other and repair drift
after a crash, an interrupted command or a change made without the plugin.
"""

from __future__ import annotations

from beets import logging
from dataclasses import dataclass, field

import numpy as np

from .indexer import EMBEDDED, FAILED, MISSING, payload_for
from .provenance import (
    CHANGED,
    OTHER_FILE,
    SOURCE_FIELD,
    USABLE,
    Records,
    audit,
    file_identity,
)
from .settings import RECORDING_FIELD, STATUS_FIELD

log = logging.getLogger("beets.soundslike")


#: Payload fields that follow the library's tags and paths.
SYNCED_FIELDS = ("artist", "title", "album", "albumartist", "album_id", "path")

#: Items of another collection embedded again by :func:`merge_same_model`,
#: and the cosine each must reach: the same model gives the same vector
#: (ONNX int8 against torch float32, the widest gap, about 0.9993), while
#: another checkpoint, or another layer of the same one, gives another.
SAME_MODEL_ITEMS = 2
SAME_MODEL_COSINE = 0.999
#: Items tried at most for that sample (records of a file since changed
#: do not count).
SAME_MODEL_TRIES = 20


def apply_library_changes(
    indexer, lib, removed: set[int], changed: set[int],
    carried: dict[int, set[int]] | None = None,
) -> None:
    """Delete removed items from every collection and the fingerprint index,
    and refresh the payload of changed items in every collection.

    ``carried`` maps items whose file beets itself rewrote or moved (tags
    written, a move or copy) to the identities the file had before: a
    record of one of them is carried over to the file's identity now."""
    store = indexer.store
    names = store.collections()
    fps = indexer.fingerprints
    if removed:
        for name in names:
            store.delete(name, removed)
        if fps is not None:
            fps.remove(removed)
            fps.flush()
    carried = {i: s for i, s in (carried or {}).items() if i not in removed}
    items = {i: lib.get_item(i) for i in (set(changed) | set(carried)) - set(removed)}
    items = {i: item for i, item in items.items() if item is not None}
    if not items:
        return
    live = {i: file_identity(items[i].path) for i in carried if i in items}
    live = {i: source for i, source in live.items() if source is not None}
    records = Records()
    for name in names:
        update = {}
        for item_id, payload in store.payloads(name, list(items)).items():
            fields = {}
            if item_id in changed:
                full = payload_for(items[item_id], indexer.settings)
                fields = {k: full[k] for k in SYNCED_FIELDS}
            source = payload.get(SOURCE_FIELD)
            if item_id in live and (source is None or source in carried[item_id]):
                fields[SOURCE_FIELD] = live[item_id]  # beets rewrote or moved it
            elif records.point(items[item_id], payload) not in USABLE:
                continue  # another file's record: 'beet embed' replaces it
            update[item_id] = fields
        store.set_payloads(name, update)
    if fps is not None and live:
        printed = set(fps.item_ids())
        stored = fps.sources(list(live))
        fps.set_sources({
            i: source for i, source in live.items()
            if i in printed and stored.get(i) in carried[i] | {None}
        })
        fps.flush()


def write_status(lib, statuses: dict[int, str]) -> None:
    """Record items' analysis status (``soundslike_status``)."""
    write_attribute(lib, STATUS_FIELD, statuses)


def write_attribute(lib, key: str, values: dict[int, object]) -> None:
    """Set a flexible attribute of many items in one transaction.

    Written straight to beets' attribute table, not with ``Item.store()``:
    the plugin's own bookkeeping is not a tag edit, so it must not send
    ``database_change`` (which would queue a payload sync and, inside an
    import stage, re-enter this plugin's listeners).
    """
    if not values:
        return
    with lib.transaction() as tx:
        for item_id, value in values.items():
            # Only for items that exist: an item removed meanwhile (by
            # another process) must not leave a row that the next item
            # given its id would inherit.
            tx.mutate(
                "INSERT INTO item_attributes (entity_id, key, value) "
                "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM items WHERE id = ?)",
                (int(item_id), key, value, int(item_id)),
            )


def drop_orphan_attributes(lib, repair: bool = True) -> int:
    """Status and recording rows of items that no longer exist (written by
    an earlier version after a removal): the next item given the id would
    inherit them. Returns how many there are; deletes them with ``repair``."""
    where = (
        "FROM item_attributes WHERE key IN (?, ?) "
        "AND entity_id NOT IN (SELECT id FROM items)"
    )
    keys = (STATUS_FIELD, RECORDING_FIELD)
    with lib.transaction() as tx:
        count = int(tx.query(f"SELECT COUNT(*) {where}", keys)[0][0])
        if repair and count:
            tx.mutate(f"DELETE {where}", keys)
    return count


def recording_groups(lib, fingerprints, item_ids) -> dict[int, int]:
    """``soundslike_recording`` values for freshly fingerprinted items, and
    for older items whose group they join.

    Items are the same recording when their landmarks agree at one time
    offset over most of the shorter track (``FingerprintIndex.same_recording``):
    the same master re-encoded, copied or trimmed, not a live take or a
    cover. A group's value is the smallest item id in it, so it is stable
    and needs no counter; when a new item links two groups, they merge.
    """
    updates: dict[int, int] = {}
    for item_id in item_ids:
        others = set(fingerprints.same_recording(item_id)) - {item_id}
        group = {item_id} | others
        for other in others:
            item = lib.get_item(other)
            current = item.get(RECORDING_FIELD) if item is not None else None
            if current:
                group.add(int(current))
        value = min(group)
        for member in {item_id} | others:
            updates[member] = value
        # Members of a merged group that were not matched directly.
        merged = {int(v) for v in group} - {value}
        for member in _items_with_attribute(lib, RECORDING_FIELD, merged):
            updates[member] = value
    return updates


def _items_with_attribute(lib, key: str, values: set[int]) -> list[int]:
    """Ids of items whose flexible attribute ``key`` is one of ``values``,
    straight from the attribute table (a beets query on a flexible field
    would load and test every item of the library)."""
    if not values:
        return []
    marks = ",".join("?" * len(values))
    with lib.transaction() as tx:
        rows = tx.query(
            f"SELECT entity_id FROM item_attributes WHERE key = ? AND value IN ({marks})",
            (key, *[str(v) for v in values]),
        )
    return [int(row[0]) for row in rows]


@dataclass
class Status:
    """How far the analysis of a set of items has come."""

    total: int = 0
    embedded: int = 0
    fingerprinted: int = 0
    failed: int = 0
    other_collections: dict[str, int] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        """Items still to analyse, failed ones not included."""
        return self.total - self.embedded - self.failed


def status(indexer, lib, items: list) -> Status:
    """Counts of usable records (a record of another file does not count),
    and the status attributes caught up with them, so that ``beet ls
    soundslike_status:...`` agrees with what this reports."""
    store = indexer.store
    current = indexer.settings.spec.collection
    found = indexer.audit(items, every=True)
    embedded = found.usable_points()
    missing = {item.id for item in found.todo}
    sync_mirror(indexer, lib, items, missing, failed=found.file_missing)
    failed = {
        item.id for item in items
        if item.id not in embedded
        and (item.id in found.file_missing or item.get(STATUS_FIELD) == FAILED)
    }
    result = Status(
        total=len(items), embedded=len(embedded),
        fingerprinted=len(found.usable_prints()), failed=len(failed),
    )
    for name in store.collections():
        if name != current:
            result.other_collections[name] = store.count(name)
    return result


@dataclass
class CheckReport:
    orphan_points: int = 0
    orphan_fingerprints: int = 0
    other_file: int = 0
    changed: int = 0
    file_missing: int = 0
    adopted: int = 0
    stale_payloads: int = 0
    missing: int = 0
    status_fixed: int = 0
    recordings_fixed: int = 0

    def lines(self) -> list[str]:
        return [
            f"orphan points (item gone from library): {self.orphan_points}",
            f"orphan fingerprints: {self.orphan_fingerprints}",
            f"records of another file (reused id or moved outside beets): {self.other_file}",
            f"records of a file changed since its analysis: {self.changed}",
            f"items whose file is missing: {self.file_missing}",
            f"identities recorded for records of an earlier version: {self.adopted}",
            f"payloads with an old path or tags: {self.stale_payloads}",
            f"items missing from the store: {self.missing}",
            f"status attributes corrected: {self.status_fixed}",
            f"recording ids set: {self.recordings_fixed}",
        ]

    @property
    def clean(self) -> bool:
        return not (
            self.orphan_points or self.orphan_fingerprints or self.other_file
            or self.changed or self.file_missing or self.adopted
            or self.stale_payloads or self.missing or self.status_fixed
            or self.recordings_fixed
        )


def check(indexer, lib, repair: bool) -> CheckReport:
    """Compare the whole library with the store. Every collection and the
    fingerprint index are judged against the live items
    (:mod:`.provenance`); with ``repair``, records of removed items, of
    another file, of a changed file or of a missing file are deleted,
    legacy records get their identity, stale payloads are refreshed and
    the status attributes corrected. Re-analysing what is then missing is
    ``beet embed``'s job."""
    report = CheckReport()
    store = indexer.store
    settings = indexer.settings
    items = {item.id: item for item in lib.items()}
    current = settings.spec.collection
    records = Records()
    other, changed = set(), set()

    for name in store.collections():
        payloads = store.payloads(name)
        orphans = set(payloads) - set(items)
        report.orphan_points += len(orphans)
        found = audit([items[i] for i in payloads if i in items], payloads, {}, None, records)
        other |= {i for i, v in found.points.items() if v == OTHER_FILE}
        changed |= {i for i, v in found.points.items() if v == CHANGED}
        report.adopted += len(found.adopt_points)
        if repair:
            store.delete(name, orphans | found.stale_points())
            store.set_payloads(name, {i: {SOURCE_FIELD: s} for i, s in found.adopt_points.items()})
        if name != current:
            continue
        stale = {}
        for item_id in found.usable_points():
            fresh = payload_for(items[item_id], settings)
            if any(payloads[item_id].get(k) != fresh[k] for k in SYNCED_FIELDS):
                stale[item_id] = {k: fresh[k] for k in SYNCED_FIELDS}
        report.stale_payloads += len(stale)
        if repair and stale:
            store.set_payloads(name, stale)

    fps = indexer.fingerprints
    if fps is not None:
        printed = set(fps.item_ids())
        fp_orphans = printed - set(items)
        report.orphan_fingerprints = len(fp_orphans)
        payloads = (
            store.payloads(current, list(printed & set(items)))
            if store.dimension(current) is not None else {}
        )
        found = audit([items[i] for i in printed if i in items], payloads,
                      fps.sources(), printed, records)
        other |= {i for i, v in found.prints.items() if v == OTHER_FILE}
        changed |= {i for i, v in found.prints.items() if v == CHANGED}
        report.adopted += len(found.adopt_prints)
        if repair:
            fps.remove(fp_orphans | found.stale_prints())
            fps.set_sources(found.adopt_prints)
            fps.flush()

    report.other_file = len(other)
    report.changed = len(changed - other)
    gone = {i for i, item in items.items() if records.live(item) is None}
    report.file_missing = len(gone)
    # After the repairs: what is left for 'beet embed'.
    found = indexer.audit(list(items.values()), every=True)
    missing = {item.id for item in found.todo}
    report.missing = len(missing)
    report.status_fixed, report.recordings_fixed = sync_mirror(
        indexer, lib, list(items.values()), missing, repair, failed=gone
    )
    report.status_fixed += drop_orphan_attributes(lib, repair)
    return report


def sync_mirror(indexer, lib, items: list, missing: set[int], repair: bool = True,
                failed: set[int] = frozenset()):
    """Make the status and recording attributes of ``items`` agree with the
    store (``missing``: the ids without usable records; ``failed``: ids
    that cannot be analysed, their file being gone). A crash between
    storing a batch and recording its status, or a run that stopped, leaves
    the mirror behind; ``beet embed``, ``--status`` and ``--check`` catch it
    up. Returns (statuses, recording ids) fixed."""
    fixes: dict[int, str] = {}
    for item in items:
        have = item.get(STATUS_FIELD)
        if item.id in failed:
            want = FAILED
        elif item.id in missing:
            want = FAILED if have == FAILED else MISSING
        else:
            want = EMBEDDED
        if have != want:
            fixes[item.id] = want
    if repair:
        write_status(lib, fixes)

    unlinked: list[int] = []
    fps = indexer.fingerprints
    if fps is not None:
        prints = fps.item_ids()
        unlinked = [
            item.id for item in items
            if item.id in prints and item.get(RECORDING_FIELD) is None
        ]
        if repair and unlinked:
            write_attribute(lib, RECORDING_FIELD, recording_groups(lib, fps, unlinked))
    return len(fixes), len(unlinked)


def merge_same_model(indexer, lib, missing: set[int]) -> list[str]:
    """Collections under another name that hold this model's own vectors,
    merged into the configured collection; their names.

    A name records a model by where it was or what it was called (a folder
    that earlier versions named by its path, a hub id now saved to a
    folder): the vectors prove it. Another collection of the same layer
    and pooling and length that holds some of the ``missing`` items is
    taken when :data:`SAME_MODEL_ITEMS` of its items, embedded again now,
    agree with its stored vectors to :data:`SAME_MODEL_COSINE`. The model
    loads only when there is such a collection (``beet embed`` was going
    to load it for the missing items anyway)."""
    store = indexer.store
    spec = indexer.settings.spec
    current = spec.collection
    candidates = {}
    for name in store.collections():
        if name == current or not name.endswith(spec.suffix):
            continue
        payloads = store.payloads(name)
        if missing & set(payloads):
            candidates[name] = payloads
    if not candidates:
        return []
    try:
        dim = indexer.embedder.dim
    except Exception:  # noqa: BLE001 - the run reports a model that cannot load
        return []
    merged = []
    for name, payloads in candidates.items():
        if store.dimension(name) != dim:
            continue
        # Items whose record there is of their file as it is now, among
        # the first few of those missing here.
        sample = []
        for item_id in sorted(missing & set(payloads))[:SAME_MODEL_TRIES]:
            item = lib.get_item(item_id)
            if item is not None and audit([item], payloads, {}, None).usable_points():
                sample.append(item)
            if len(sample) == SAME_MODEL_ITEMS:
                break
        if len(sample) < SAME_MODEL_ITEMS:
            continue
        stored = store.vectors(name, [item.id for item in sample])
        fresh = [indexer.vector_of(item) for item in sample]
        if any(vector is None for vector in fresh):
            continue
        agree = [float(np.dot(vector, stored[item.id])) for vector, item in zip(fresh, sample)]
        if min(agree) < SAME_MODEL_COSINE:
            log.debug("collection {}: not this model's vectors (cosine {:.4f})", name, min(agree))
            continue
        log.info(
            "collection {} holds vectors of {} (cosine {:.4f} with {} items embedded again): "
            "its {} points join {}", name, spec.describe(), min(agree), len(sample),
            len(payloads), current,
        )
        store.rename(name, current)
        merged.append(name)
    return merged
