"""A radio for MPD: keep the play queue topped up with tracks that sound
like the last few played.

:class:`Radio` talks to MPD with python-mpd2. It maps library paths to
MPD's URIs (paths relative to MPD's music directory, as beets sees that
folder), checks once at the start that MPD knows the library, then waits
on MPD's ``idle`` command for player and queue changes: whenever fewer
than ``ahead`` tracks are left after the playing one, it asks
``recommend(seed_ids, exclude_ids, count)`` (the ``beet similar``
machinery, passed in by the command) for tracks that sound like the last
few played and appends them. A track that was in the queue or played since
the radio started is never added again. When MPD goes away (a restart)
the radio reconnects with backoff and carries on where it was.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Library tracks looked up in MPD's database at the start.
CHECK_SAMPLE = 12
#: Reconnection delays: the first, the longest (each wait doubles).
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: How many times a top-up asks again for tracks MPD refused to add.
ASK_ROUNDS = 3


class RadioError(Exception):
    """The radio cannot run; the message says why in one line."""


class MpdUnreachable(RadioError):
    """MPD did not answer (refused, unknown host, timed out, went away)."""


class RecommendFailed(Exception):
    """``recommend`` could not answer this time (the store is busy, the
    seeds are not embedded); the radio tries again at the next change."""


@dataclass(frozen=True)
class MpdAddress:
    """Where MPD listens and how to log in."""

    host: str = "localhost"
    port: int = 6600
    password: str = ""
    timeout: float = 10.0

    def describe(self) -> str:
        if self.host.startswith(("/", "@")):
            return self.host
        return f"{self.host}:{self.port}"


def connect(address: MpdAddress):
    """A connected, logged-in python-mpd2 client, or :class:`RadioError`
    with one line saying what went wrong."""
    import mpd

    client = mpd.MPDClient()
    client.timeout = address.timeout
    where = address.describe()
    try:
        client.connect(address.host, address.port)
    except socket.gaierror as exc:
        raise MpdUnreachable(
            f"cannot reach MPD at {where}: unknown host ({exc.strerror or exc}); "
            "check mpd.host or --host"
        )
    except ConnectionRefusedError:
        raise MpdUnreachable(
            f"cannot reach MPD at {where}: connection refused (is MPD running? "
            "check mpd.host and mpd.port or --host/--port)"
        )
    except (socket.timeout, TimeoutError):
        raise MpdUnreachable(f"cannot reach MPD at {where}: no answer within "
                             f"{address.timeout:g} s")
    except mpd.ProtocolError:
        raise MpdUnreachable(f"{where} does not answer like MPD (check mpd.port)")
    except (OSError, mpd.ConnectionError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise MpdUnreachable(f"cannot reach MPD at {where}: {reason}")
    try:
        if address.password:
            try:
                client.password(address.password)
            except mpd.CommandError:
                raise RadioError(
                    f"MPD at {where} refused the password (check mpd.password "
                    "or --password)"
                )
        if "add" not in client.commands():
            raise RadioError(
                f"MPD at {where} does not let this client add tracks: "
                + ("the password lacks the 'add' permission"
                   if address.password else "set mpd.password or --password")
            )
    except BaseException:
        quietly_disconnect(client)
        raise
    return client


def quietly_disconnect(client) -> None:
    try:
        client.disconnect()
    except Exception:  # already gone
        pass


# -- paths and URIs --------------------------------------------------------


def uri_map(
    paths: Iterable[tuple[int, str | bytes]], music_dir: str | os.PathLike
) -> dict[int, str]:
    """MPD's URI for every item id whose path lies inside ``music_dir``
    (the folder MPD's music_directory is, as this machine sees it)."""
    root = os.path.abspath(os.path.expanduser(os.fspath(music_dir)))
    roots = {root, os.path.realpath(root)}
    uris: dict[int, str] = {}
    for item_id, path in paths:
        path = os.fsdecode(path)
        for base in roots:
            rel = os.path.relpath(path, base)
            if not rel.startswith(os.pardir + os.sep) and rel != os.pardir:
                uris[int(item_id)] = rel.replace(os.sep, "/")
                break
    return uris


def check_library(client, uris: Mapping[int, str], music_dir, where: str) -> int:
    """Raise :class:`RadioError` unless MPD knows at least one library
    track; returns how many of the sample it knows."""
    if not uris:
        raise RadioError(
            f"no library track lies inside {music_dir}, the folder taken for "
            "MPD's music directory: set mpd.music_directory (or "
            "--music-directory) to the folder MPD plays from"
        )
    ordered = sorted(uris.values())
    step = max(1, len(ordered) // CHECK_SAMPLE)
    sample = ordered[::step][:CHECK_SAMPLE]
    known = sum(1 for uri in sample if client.find("file", uri))
    if not known:
        raise RadioError(
            f"MPD at {where} knows none of the library's tracks (looked for "
            f"{len(sample)}, e.g. {sample[0]!r} under {music_dir}): point "
            "mpd.music_directory at the folder MPD plays from, or update "
            "MPD's database"
        )
    return known


# -- the radio ---------------------------------------------------------------


Recommend = Callable[[Sequence[int], set, int], Sequence[int]]


class Radio:
    """Keeps MPD's queue at least ``ahead`` tracks past the playing one.

    ``uris`` maps library item ids to MPD URIs; ``recommend(seeds,
    exclude, count)`` returns item ids, best first (or raises
    :class:`RecommendFailed`); ``start_seeds`` are used
    when nothing is playing or queued; ``label(id)`` names a track in the
    log. ``once`` tops the queue up once and returns.
    """

    def __init__(
        self,
        address: MpdAddress,
        uris: Mapping[int, str],
        recommend: Recommend,
        log,
        *,
        music_dir: str = "",
        ahead: int = 3,
        count: int | None = None,
        seeds: int = 3,
        start_seeds: Sequence[int] = (),
        label: Callable[[int], str] | None = None,
        once: bool = False,
    ) -> None:
        if ahead < 1:
            raise RadioError("--ahead must be 1 or more")
        if count is not None and count < 1:
            raise RadioError("-n must be 1 or more")
        if seeds < 1:
            raise RadioError("the radio needs at least one seed track")
        self.address = address
        self.uris = dict(uris)
        self.ids = {uri: item_id for item_id, uri in self.uris.items()}
        self.recommend = recommend
        self.log = log
        self.music_dir = music_dir
        self.ahead = ahead
        self.count = count or ahead
        self.seeds = seeds
        self.start_seeds = list(start_seeds)
        self.label = label or (lambda item_id: self.uris.get(item_id, str(item_id)))
        self.once = once
        #: Item ids played (seen as the current song) since the start, in order.
        self.history: list[int] = []
        #: Every item id queued or played since the start: never added again.
        self.seen: set[int] = set()
        #: Item ids the radio added, in order.
        self.added: list[int] = []
        self.client = None
        self.stopping = threading.Event()
        self.dry = False  # the last top-up found nothing to add

    # -- running -----------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (Ctrl-C, :meth:`stop`) or, with ``once``,
        after one top-up. Returns how many tracks were added."""
        self.client = connect(self.address)
        try:
            check_library(self.client, self.uris, self.music_dir,
                          self.address.describe())
            while not self.stopping.is_set():
                try:
                    self.serve(self.client)
                    break
                except Exception as exc:
                    if not lost_connection(exc):
                        raise
                    if self.stopping.is_set():
                        break
                    if self.once:
                        raise MpdUnreachable(
                            f"lost the connection to MPD at "
                            f"{self.address.describe()} ({exc or type(exc).__name__})"
                        )
                    quietly_disconnect(self.client)
                    self.client = None
                    self.log.warning(
                        "lost the connection to MPD ({}); reconnecting",
                        exc or type(exc).__name__,
                    )
                    self.client = self.reconnect()
        finally:
            if self.client is not None:
                quietly_disconnect(self.client)
                self.client = None
        return len(self.added)

    def serve(self, client) -> None:
        """Top up, then wait for the player or the queue to change, until
        stopped (or once)."""
        while not self.stopping.is_set():
            self.top_up(client)
            if self.once:
                return
            client.idle("player", "playlist")

    def reconnect(self):
        """Connect again, waiting longer after each failure; None when
        stopped meanwhile."""
        delay = BACKOFF_FIRST
        while not self.stopping.wait(delay):
            try:
                client = connect(self.address)
            except MpdUnreachable as exc:
                self.log.debug("MPD not back yet ({})", exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.log.info("reconnected to MPD at {}", self.address.describe())
            return client
        return None

    def stop(self) -> None:
        """Stop from another thread: wakes a waiting ``idle``."""
        self.stopping.set()
        client = self.client
        if client is None:
            return
        try:
            with socket.socket(fileno=os.dup(client.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # not connected any more
            pass

    # -- one top-up --------------------------------------------------------

    def top_up(self, client) -> int:
        """Append tracks when fewer than ``ahead`` follow the playing one;
        returns how many were added."""
        status = client.status()
        queue = [self.ids.get(song.get("file")) for song in client.playlistinfo()]
        self.seen.update(i for i in queue if i is not None)
        current = int(status["song"]) if "song" in status else None
        if current is not None and current < len(queue):
            self.played(queue[: current + 1] if not self.history else [queue[current]])
        left = len(queue) - (current + 1 if current is not None else 0)
        if left >= self.ahead:
            self.dry = False
            return 0
        seeds = self.seed_ids(queue, current)
        if not seeds:
            message = (
                "nothing is playing or queued to start from: queue a track, "
                "or give a query (beet radio QUERY)"
            )
            if self.once:
                raise RadioError(message)
            if not self.dry:
                self.log.warning("{}", message)
                self.dry = True
            return 0
        want = max(self.count, self.ahead - left)
        try:
            added = self.append(client, seeds, want)
        except RecommendFailed as exc:
            if self.once:
                raise RadioError(str(exc))
            self.log.warning("radio: {} (trying again at the next change)", exc)
            return 0
        if not added and not self.dry:
            self.log.warning("no more tracks to add: every match was played or "
                             "queued already")
        self.dry = not added
        return added

    def played(self, ids: Iterable[int | None]) -> None:
        for item_id in ids:
            if item_id is not None and (not self.history or self.history[-1] != item_id):
                self.history.append(item_id)
                self.seen.add(item_id)

    def seed_ids(self, queue: Sequence[int | None], current: int | None) -> list[int]:
        """The last few played; else the end of the queue; else the start
        seeds."""
        for source in (self.history, [i for i in queue if i is not None], self.start_seeds):
            picked = list(dict.fromkeys(reversed(source)))[: self.seeds]
            if picked:
                return picked[::-1]
        return []

    def append(self, client, seeds: list[int], want: int) -> int:
        """Ask for ``want`` tracks and queue them; asks again (a few times)
        for those MPD refused (not in its database yet)."""
        import mpd

        added = 0
        for _ in range(ASK_ROUNDS):
            candidates = self.recommend(seeds, self.seen | set(seeds), want - added)
            refused = 0
            for item_id in candidates:
                uri = self.uris.get(int(item_id))
                if uri is None or item_id in self.seen or item_id in seeds:
                    continue
                self.seen.add(item_id)
                try:
                    client.add(uri)
                except mpd.CommandError as exc:
                    self.log.info("MPD cannot add {} ({}); skipped", uri, exc)
                    refused += 1
                    continue
                self.added.append(item_id)
                added += 1
                self.log.info("radio: queued {}", self.label(item_id))
                if added >= want:
                    return added
            if not refused:
                break
        return added


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection to MPD is gone."""
    import mpd

    return isinstance(exc, (mpd.ConnectionError, ConnectionError, OSError, EOFError))
