"""beets-soundslike: identify clips against your library and build
sounds-like playlists.

The plugin class only wires beets events and commands to the modules that
do the work:

* :mod:`.settings` holds every default and validates the options,
* :mod:`.audio` decodes any file to 16 kHz mono,
* :mod:`.embedder` turns audio into a Wav2Vec2 vector,
* :mod:`.fingerprint` builds and searches landmark hashes,
* :mod:`.store` keeps vectors in Qdrant (embedded or a server),
* :mod:`.indexer` runs the analysis of items for import and ``beet embed``,
* :mod:`.playlist`, :mod:`.identify` and :mod:`.web` answer ``similar``,
  ``identify`` and ``listen``, whose commands live in :mod:`.commands`.

Nothing heavy is imported at load time: ``beet ls`` with the plugin enabled
costs nothing, and ``beet similar`` never imports torch.
"""

from __future__ import annotations

from beets import dbcore, ui
from beets.plugins import BeetsPlugin

from .settings import (
    DEFAULTS,
    RECORDING_FIELD,
    STATUS_FIELD,
    ConfigError,
    ListenSettings,
    PlaylistSettings,
    Settings,
    load_listen_settings,
    load_playlist_settings,
    load_settings,
)


class SoundsLikePlugin(BeetsPlugin):
    """Wires beets events and commands to the soundslike modules."""

    item_types = {
        STATUS_FIELD: dbcore.types.STRING,
        RECORDING_FIELD: dbcore.types.NullInteger(),
    }

    def __init__(self, name: str | None = None) -> None:
        super().__init__("soundslike")
        self.config.add(DEFAULTS)
        self.config["api_key"].redact = True
        self.config["listen_token"].redact = True
        self._indexer = None
        self._settings: Settings | None = None
        self._changed_ids: set[int] = set()
        self._removed_ids: set[int] = set()
        #: Items whose file beets rewrote or moved in this command -> the
        #: identities the file had before (carried over at the end).
        self._carried: dict[int, set[int]] = {}
        self._failed_during_import: list[tuple[object, str]] = []
        self._import_stops: dict[str, int] = {}
        self._warned: set[str] = set()
        self._imported_any = False
        #: Embedded tracks were added or removed: mixes are rewritten at exit.
        self._mixes_stale = False
        #: The library of the running command or import (set by them).
        self.lib = None
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]
        self.register_listener("database_change", self._on_database_change)
        self.register_listener("item_removed", self._on_item_removed)
        self.register_listener("write", self._before_write)
        for event in ("item_moved", "item_copied", "item_linked",
                      "item_hardlinked", "item_reflinked"):
            self.register_listener(event, self._on_file_moved)
        self.register_listener("cli_exit", self._on_cli_exit)

    # -- shared plumbing --------------------------------------------------

    @property
    def log(self):
        """The plugin's logger (``beet -v`` shows its debug lines)."""
        return self._log

    def settings(self, lib=None) -> Settings:
        """The validated model, store and fingerprint options."""
        if self._settings is None:
            path = getattr(lib or self.lib, "path", None)
            self._settings = _checked(load_settings, self.config, path)
        return self._settings

    def playlist_settings(self) -> PlaylistSettings:
        """The validated playlist options (``beet similar``, suggestions)."""
        return _checked(load_playlist_settings, self.config)

    def listen_settings(self) -> ListenSettings:
        """The validated options of ``beet listen``."""
        return _checked(load_listen_settings, self.config)

    def indexer(self, lib):
        """The process-wide indexer: the model loads once, on first need."""
        if self._indexer is None:
            from .indexer import Indexer

            settings = self.settings(lib)

            def make_embedder():
                from .embedder import Embedder

                return Embedder(
                    settings.spec,
                    device=settings.device,
                    quantize=settings.quantize,
                    excerpts=settings.excerpts,
                    excerpt_seconds=settings.excerpt_seconds,
                    runtime=settings.runtime,
                    cache_dir=settings.onnx_dir,
                )

            self._indexer = Indexer(settings, make_embedder)
        return self._indexer

    def mark(self, item, status: str) -> None:
        """Mirror the store's state in the queryable ``soundslike_status``
        attribute of ``item``."""
        from .maintenance import write_status

        write_status(item._db, {item.id: status})
        item._values_flex[STATUS_FIELD] = status
        self._mixes_stale = self._mixes_stale or status == "embedded"

    def link_recordings(self, items) -> None:
        """After a batch is stored: give its items their recording ids."""
        from .maintenance import recording_groups, write_attribute

        indexer = self._indexer
        if indexer is None or indexer.fingerprints is None or not items:
            return
        lib = items[0]._db
        updates = recording_groups(lib, indexer.fingerprints, [i.id for i in items])
        write_attribute(lib, RECORDING_FIELD, updates)
        for item in items:
            if item.id in updates:
                item._values_flex[RECORDING_FIELD] = updates[item.id]

    # -- import -------------------------------------------------------------

    def imported(self, session, task) -> None:
        """Import stage: analyse the task's new items. A failure leaves the
        items for ``beet embed``; it never stops the import, and is said
        once, at the end, in the line that sets the exit status."""
        self.lib = session.lib
        items = [item for item in task.imported_items() if item.id]
        if not items:
            return
        try:
            report = self.indexer(session.lib).run(
                items, mark=self.mark, on_batch=self.link_recordings, lib=session.lib
            )
        except ui.UserError as exc:  # a bad config value
            report = None
            reason = str(exc)
        else:
            reason = report.stopped
            self._failed_during_import += report.failed
            self._imported_any = self._imported_any or report.embedded > 0
        if reason:
            self._import_stops.setdefault(reason, 0)
            left = [i for i in items if i.get(STATUS_FIELD) not in ("embedded", "failed")]
            self._import_stops[reason] += len(left)
            for item in left:
                self.mark(item, "missing")

    # -- keeping the index in step with the library -------------------------

    def _on_database_change(self, lib, model) -> None:
        if model.__class__.__name__ == "Item" and getattr(model, "id", None):
            self.lib = lib
            self._changed_ids.add(model.id)

    def _on_item_removed(self, item) -> None:
        if item.id:
            self._removed_ids.add(item.id)

    def _before_write(self, item, path, tags) -> None:
        """beets is about to write tags into the item's file: the records
        of the file as it is now carry over to it once written."""
        from .provenance import file_identity

        if item.id and path == item.path:
            self._carry(item.id, file_identity(path))

    def _on_file_moved(self, item, source, destination) -> None:
        """beets moved, copied or linked the item's file: its records carry
        over to the new path (size and time from the file now there)."""
        from .provenance import file_identity

        if item.id:
            self._carry(item.id, file_identity(source) or file_identity(source, destination))

    def _carry(self, item_id: int, before: int | None) -> None:
        if before is not None:
            self._carried.setdefault(item_id, set()).add(before)
            self._changed_ids.add(item_id)

    def build_search_index(self, indexer) -> None:
        """Index new points for HNSW search once enough have gathered
        (many small imports add up too)."""
        from .store import OPTIMIZE_AFTER, StoreError

        try:
            if indexer.store.optimize(min_unindexed=OPTIMIZE_AFTER):
                self._log.info("built the search index for new tracks")
        except StoreError as exc:
            self._log.warning("could not build the search index ({})", exc)

    def _on_cli_exit(self, lib) -> None:
        """Apply removals and payload changes to every collection in one go,
        at the end of the command (one store access, not one per item)."""
        try:
            self.sync_index(lib)
            if self._indexer is not None and self._imported_any:
                self.build_search_index(self._indexer)
        finally:
            if self._indexer is not None:
                from .store import StoreError

                indexer, self._indexer = self._indexer, None
                try:
                    indexer.close()  # writes what the index still buffers
                except StoreError as exc:  # busy, or a full disk
                    self.store_warning(exc)
        if self._mixes_stale and self.config["auto"].get(bool):
            from .commands.mixes import auto_rewrite

            self._mixes_stale = False
            auto_rewrite(self, lib)
        problems = []
        if self._failed_during_import:
            problems.append(
                f"{len(self._failed_during_import)} imported item(s) could not be "
                "analysed (see above; 'beet ls soundslike_status:failed')"
            )
        for reason, count in self._import_stops.items():
            problems.append(
                f"{count} imported item(s) were left for 'beet embed' ({reason})"
            )
        self._failed_during_import, self._import_stops = [], {}
        if problems:
            raise ui.UserError("soundslike: " + "; ".join(problems))

    def sync_index(self, lib) -> None:
        """Pass the library changes seen so far (removals, tag and path
        edits) on to the store and the fingerprint index."""
        if not (self._changed_ids or self._removed_ids):
            return
        from . import maintenance
        from .store import StoreError

        removed, changed = self._removed_ids, self._changed_ids - self._removed_ids
        self._mixes_stale = self._mixes_stale or bool(removed)
        carried = self._carried
        self._removed_ids, self._changed_ids, self._carried = set(), set(), {}
        try:
            maintenance.apply_library_changes(
                self.indexer(lib), lib, removed=removed, changed=changed, carried=carried
            )
        except StoreError as exc:
            self.store_warning(exc)

    def store_warning(self, exc: Exception) -> None:
        """Warn that library changes could not reach the store or the
        fingerprint index, once per reason: a reason the command's error
        line already gives is not said again."""
        reason = str(exc)
        if reason in self._import_stops or reason in self._warned:
            return
        self._warned.add(reason)
        self._log.warning("could not update the store ({}); 'beet embed --check' will", reason)

    # -- commands -----------------------------------------------------------

    def commands(self):
        from . import commands

        return commands.build(self)


def _checked(load, *args):
    """Settings from ``load(*args)``; a bad option ends the command with the
    option's name."""
    try:
        return load(*args)
    except ConfigError as exc:
        raise ui.UserError(str(exc))
