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

from .indexer import EMBEDDED, FAILED, MISSING, payload_for
from .settings import RECORDING_FIELD, STATUS_FIELD

log = logging.getLogger("beets.soundslike")


#: Payload fields that follow the library's tags and paths.
SYNCED_FIELDS = ("artist", "title", "album", "albumartist", "album_id", "path")


def apply_library_changes(indexer, lib, removed: set[int], changed: set[int]) -> None:
    """Delete removed items from every collection and the fingerprint index,
    and refresh the payload of changed items in every collection."""
    store = indexer.store
    names = store.collections()
    if removed:
        for name in names:
            store.delete(name, removed)
        fps = indexer.fingerprints
        if fps is not None:
            fps.remove(removed)
            fps.flush()
    if changed:
        payloads = {}
        for item_id in changed:
            item = lib.get_item(item_id)
            if item is not None:
                full = payload_for(item, indexer.settings)
                payloads[item_id] = {k: full[k] for k in SYNCED_FIELDS}
        for name in names:
            store.set_payloads(name, payloads)


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
            tx.mutate(
                "INSERT INTO item_attributes (entity_id, key, value) VALUES (?, ?, ?)",
                (int(item_id), key, value),
            )


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
        return self.total - self.embedded


def status(indexer, items: list) -> Status:
    ids = {item.id for item in items}
    store = indexer.store
    current = indexer.settings.spec.collection
    embedded = indexer.embedded_ids() & ids
    result = Status(
        total=len(ids),
        embedded=len(embedded),
        fingerprinted=len(indexer.fingerprinted_ids() & ids),
        failed=sum(
            1 for item in items
            if item.get(STATUS_FIELD) == FAILED and item.id not in embedded
        ),
    )
    for name in store.collections():
        if name != current:
            result.other_collections[name] = store.count(name)
    return result


@dataclass
class CheckReport:
    orphan_points: int = 0
    orphan_fingerprints: int = 0
    stale_payloads: int = 0
    missing: int = 0
    status_fixed: int = 0
    recordings_fixed: int = 0

    def lines(self) -> list[str]:
        return [
            f"orphan points (item gone from library): {self.orphan_points}",
            f"orphan fingerprints: {self.orphan_fingerprints}",
            f"payloads with an old path or tags: {self.stale_payloads}",
            f"items missing from the store: {self.missing}",
            f"status attributes corrected: {self.status_fixed}",
            f"recording ids set: {self.recordings_fixed}",
        ]

    @property
    def clean(self) -> bool:
        return not (
            self.orphan_points or self.orphan_fingerprints or self.stale_payloads
            or self.missing or self.status_fixed or self.recordings_fixed
        )


def check(indexer, lib, repair: bool) -> CheckReport:
    """Compare the whole library with the store; with ``repair``, delete
    orphans, refresh stale payloads and correct status attributes. Missing
    items are only counted: embedding them is ``beet embed``'s job."""
    report = CheckReport()
    store = indexer.store
    settings = indexer.settings
    items = {item.id: item for item in lib.items()}
    current = settings.spec.collection

    for name in store.collections():
        payloads = store.payloads(name)
        orphans = set(payloads) - set(items)
        report.orphan_points += len(orphans)
        if repair and orphans:
            store.delete(name, orphans)
        if name != current:
            continue
        stale = {}
        for item_id, payload in payloads.items():
            item = items.get(item_id)
            if item is None:
                continue
            fresh = payload_for(item, settings)
            if any(payload.get(k) != fresh[k] for k in SYNCED_FIELDS):
                stale[item_id] = {k: fresh[k] for k in SYNCED_FIELDS}
        report.stale_payloads += len(stale)
        if repair and stale:
            store.set_payloads(name, stale)

    fps = indexer.fingerprints
    if fps is not None:
        fp_orphans = set(fps.item_ids()) - set(items)
        report.orphan_fingerprints = len(fp_orphans)
        if repair and fp_orphans:
            fps.remove(fp_orphans)
            fps.flush()

    missing = {item.id for item in indexer.missing(items.values())}
    report.missing = len(missing)
    report.status_fixed, report.recordings_fixed = sync_mirror(
        indexer, lib, list(items.values()), missing, repair
    )
    return report


def sync_mirror(indexer, lib, items: list, missing: set[int], repair: bool = True):
    """Make the status and recording attributes of ``items`` agree with the
    store (``missing``: the ids the store lacks). A crash between storing a
    batch and recording its status leaves the mirror behind; ``beet embed``
    and ``--check`` catch it up. Returns (statuses, recording ids) fixed."""
    fixes: dict[int, str] = {}
    for item in items:
        have = item.get(STATUS_FIELD)
        if item.id in missing:
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
