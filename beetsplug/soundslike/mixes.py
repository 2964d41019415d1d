"""Mixes kept current: sounds-like playlists written into a folder that
players read (MPD, Navidrome, Jellyfin, Kodi, Plex), as beets'
smartplaylist writes its playlists.

A mix is an entry of ``soundslike.mixes``::

    mixes:
      - name: evening
        query: "genre:jazz year:1955..1965"
        count: 20
        max_per_artist: 2
        unlike: "artist:Kenny G"

``name`` and ``query`` are the mix's own keys; every other key is a
``beet similar`` option under its long name (``max_per_artist`` or
``max-per-artist`` for ``--max-per-artist``). This module checks the
entries, compares each mix's new M3U text with the file on disk, says what
would change and writes the files atomically. The M3U text itself comes
from a ``compute(mix)`` function the command passes in (the same machinery
as ``beet similar``), so this module never touches the store.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .files import write_atomic

#: Keys of a mix entry that are not ``beet similar`` options.
OWN_KEYS = ("name", "query")
#: ``beet similar`` options that make no sense in a playlist file.
NOT_IN_MIXES = ("format", "continue")
#: The kinds of option value a mix entry can hold.
KINDS = ("int", "float", "flag", "text", "texts")


class MixConfigError(Exception):
    """A mix entry that cannot work; the message names the mix and key."""


class MixError(Exception):
    """The mixes cannot be written (a folder that cannot be created, a
    file that cannot be replaced); the message says why in one line."""


class MixSkipped(Exception):
    """This mix cannot be computed now (its seed query matches nothing, no
    seed is embedded yet): its old file stays, the message says why."""


@dataclass(frozen=True)
class OptionSpec:
    """How a mix key maps onto a ``beet similar`` option: the option's
    ``dest`` and the kind of value it takes (one of :data:`KINDS`)."""

    dest: str
    kind: str


@dataclass(frozen=True)
class Mix:
    """One checked mix entry: its file name (without ``.m3u``), the seed
    query as command-line terms, and option values by ``dest``."""

    name: str
    query: tuple[str, ...]
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.m3u"


# -- reading the config ------------------------------------------------------


def parse_mixes(entries, options: Mapping[str, OptionSpec]) -> list[Mix]:
    """Check the ``soundslike.mixes`` list. ``options`` maps each allowed
    key (long option name with underscores) to its :class:`OptionSpec`.
    Raises :class:`MixConfigError` naming the mix and the key."""
    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise MixConfigError(
            "soundslike.mixes must be a list of {name: ..., query: ...} entries"
        )
    mixes: list[Mix] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        mix = parse_mix(index, entry, options)
        if mix.name in seen:
            raise MixConfigError(f"soundslike.mixes: two mixes are named {mix.name!r}")
        seen.add(mix.name)
        mixes.append(mix)
    return mixes


def parse_mix(index: int, entry, options: Mapping[str, OptionSpec]) -> Mix:
    where = f"soundslike.mixes[{index}]"
    if not isinstance(entry, Mapping):
        raise MixConfigError(f"{where} must be a mapping with name and query")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise MixConfigError(f"{where} needs a name (the playlist's file name)")
    name = name.strip()
    check_name(name, where)
    where = f"soundslike.mixes {name!r}"
    query = entry.get("query")
    if isinstance(query, str):
        try:
            terms = tuple(shlex.split(query))
        except ValueError as exc:
            raise MixConfigError(f"{where}: query {query!r} cannot be read ({exc})")
    elif isinstance(query, (list, tuple)) and all(isinstance(q, str) for q in query):
        terms = tuple(query)
    else:
        raise MixConfigError(f"{where} needs a query (the seed tracks), e.g. 'artist:X'")
    if not terms:
        raise MixConfigError(f"{where}: the query is empty")
    values: dict[str, object] = {}
    for raw_key, value in entry.items():
        key = str(raw_key).replace("-", "_")
        if key in OWN_KEYS:
            continue
        spec = options.get(key)
        if spec is None or key in NOT_IN_MIXES:
            known = ", ".join(sorted(k for k in options if k not in NOT_IN_MIXES))
            raise MixConfigError(
                f"{where}: unknown key {raw_key!r} (a mix takes name, query and "
                f"the long name of a 'beet similar' option: {known})"
            )
        values[spec.dest] = convert(value, spec.kind, f"{where}: {key}")
    return Mix(name=name, query=terms, options=values)


def check_name(name: str, where: str) -> None:
    """A mix name is a plain file name: no folders, no hidden files."""
    if (
        "/" in name or os.sep in name or "\0" in name
        or name.startswith(".") or name != name.strip()
    ):
        raise MixConfigError(
            f"{where}: name {name!r} must be a plain file name (no '/', not "
            "starting with '.')"
        )


def convert(value, kind: str, what: str):
    """A mix key's value as the option takes it; ``what`` names it in the
    error."""
    if kind == "flag":
        if not isinstance(value, bool):
            raise MixConfigError(f"{what} must be yes or no")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise MixConfigError(f"{what} must be a whole number")
        try:
            return int(value)
        except ValueError:
            raise MixConfigError(f"{what} must be a whole number, not {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise MixConfigError(f"{what} must be a number")
        try:
            return float(value)
        except ValueError:
            raise MixConfigError(f"{what} must be a number, not {value!r}")
    if kind == "text":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise MixConfigError(f"{what} must be text")
        return str(value)
    if kind == "texts":
        values = [value] if isinstance(value, (str, int, float)) else value
        if isinstance(values, bool) or not isinstance(values, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in values
        ):
            raise MixConfigError(f"{what} must be text or a list of texts")
        return [str(v) for v in values]
    raise ValueError(f"unknown option kind {kind!r}")


# -- comparing and writing ---------------------------------------------------


@dataclass
class MixResult:
    """A mix's file before and after: ``new`` is None when the mix could
    not be computed (``reason`` says why) and its old file stays."""

    mix: Mix
    path: Path
    old: str | None
    new: str | None
    reason: str = ""
    written: bool = False

    @property
    def state(self) -> str:
        """``new``, ``changed``, ``unchanged`` or ``kept``."""
        if self.new is None:
            return "kept"
        if self.old is None:
            return "new"
        return "unchanged" if self.old == self.new else "changed"

    @property
    def needs_write(self) -> bool:
        return self.state in ("new", "changed")

    def describe(self, verbose: bool = True) -> list[str]:
        """What changes, for ``beet mixes -p`` and the log: a summary line,
        then (``verbose``) one ``+``/``-`` line per track path."""
        name = self.mix.filename
        state = self.state
        if state == "kept":
            where = "keeps its old file" if self.old is not None else "not written"
            return [f"{name}: {where} ({self.reason})"]
        new_paths = m3u_paths(self.new or "")
        if state == "new":
            lines = [f"{name}: new, {len(new_paths)} track(s)"]
            return lines + ([f"  + {p}" for p in new_paths] if verbose else [])
        if state == "unchanged":
            return [f"{name}: unchanged"]
        old_paths = m3u_paths(self.old or "")
        added = [p for p in new_paths if p not in set(old_paths)]
        removed = [p for p in old_paths if p not in set(new_paths)]
        if added or removed:
            summary = f"{name}: {len(added)} added, {len(removed)} removed"
        elif old_paths != new_paths:
            summary = f"{name}: same tracks, new order"
        else:
            summary = f"{name}: new track details"  # lengths, tags
        if not verbose:
            return [summary]
        return [summary] + [f"  + {p}" for p in added] + [f"  - {p}" for p in removed]


def m3u_paths(text: str) -> list[str]:
    """The track lines of an M3U text, in order."""
    return [
        line.strip() for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def mix_path(playlist_dir: str | os.PathLike, mix: Mix) -> Path:
    return Path(os.path.expanduser(os.fspath(playlist_dir))) / mix.filename


def read_current(path: Path) -> str | None:
    """The mix file as it is now, or None when there is none."""
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MixError(f"cannot read {path}: {exc.strerror or exc}")


def plan(
    mixes: Sequence[Mix],
    playlist_dir: str | os.PathLike,
    compute: Callable[[Mix], str],
) -> list[MixResult]:
    """Each mix's current file and new text. ``compute(mix)`` returns the
    M3U text or raises :class:`MixSkipped` (the old file is then kept);
    any other error ends the run."""
    results = []
    for mix in mixes:
        path = mix_path(playlist_dir, mix)
        old = read_current(path)
        try:
            new = compute(mix)
        except MixSkipped as exc:
            results.append(MixResult(mix, path, old, None, reason=str(exc)))
            continue
        results.append(MixResult(mix, path, old, new))
    return results


def write(results: Iterable[MixResult]) -> list[MixResult]:
    """Write the mixes whose text changed, each atomically (a player never
    reads half a file); an unchanged file is not touched. Returns the
    results written."""
    written = []
    for result in results:
        if not result.needs_write:
            continue
        folder = result.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(result.path, (result.new or "").encode(
                "utf-8", errors="surrogateescape"
            ), suffix=".m3u")
        except OSError as exc:
            raise MixError(
                f"cannot write {result.path}: {exc.strerror or exc} "
                "(check soundslike.playlist_dir)"
            )
        result.written = True
        written.append(result)
    return written


def select(mixes: Sequence[Mix], names: Sequence[str]) -> list[Mix]:
    """The mixes named (all when ``names`` is empty); an unknown name is a
    :class:`MixConfigError` listing the configured ones."""
    if not names:
        return list(mixes)
    by_name = {mix.name: mix for mix in mixes}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none configured"
        raise MixConfigError(
            f"no mix named {', '.join(map(repr, unknown))} (soundslike.mixes: {known})"
        )
    return [by_name[n] for n in dict.fromkeys(names)]
