"""The MPD radio against a real MPD (Debian's ``mpd``, started on a free
port with the test library as its music directory): topping the queue up,
track changes with the client's ``next``, an MPD restart in the middle,
never a repeated track, and one clear line for every way it cannot start.

Here the radio is driven directly, with a plain recommender over the
library's item ids (nearest id first), so only the MPD side is tested."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading

import pytest
from conftest import gen_audio
from mpd_server import free_port, mpd_factory, wait_until  # noqa: F401

from beets import logging
from beets.library import Item
from beets.test.helper import TestHelper
from beetsplug.soundslike.radio import (
    MpdAddress,
    MpdUnreachable,
    Radio,
    RadioError,
    RecommendFailed,
    uri_map,
)

TRACKS = 36
EXTS = [".ogg", ".mp3", ".flac"]
LOG = logging.getLogger("beets.soundslike.radio-test")


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """36 generated tracks in artist folders (20 s each: none ends by
    itself while a test runs)."""
    root = tmp_path_factory.mktemp("radio-music")
    for seed in range(TRACKS):
        artist = gen_audio.ARTISTS[seed % 3]
        folder = root / artist
        folder.mkdir(exist_ok=True)
        gen_audio.write(
            gen_audio.piece(seed, 20.0), str(folder / f"t{seed:02d}{EXTS[seed % 3]}"),
            tags={"title": f"Track {seed}", "artist": artist},
        )
    return root


@pytest.fixture
def library(music):
    """A real beets library whose folder holds the tracks."""
    helper = TestHelper()
    helper.setup_beets()
    try:
        shutil.copytree(music, helper.lib_path, dirs_exist_ok=True)
        for path in sorted(helper.lib_path.rglob("t*.*")):
            helper.lib.add(Item.from_path(str(path)))
        assert len(helper.lib.items()) == TRACKS
        yield helper
    finally:
        helper.teardown_beets()


def uris_of(helper) -> dict[int, str]:
    return uri_map(((i.id, i.path) for i in helper.lib.items()), helper.lib_path)


def nearest_ids(all_ids):
    """A recommender with an obvious answer: the ids nearest the last seed."""
    calls = []

    def recommend(seeds, exclude, count):
        calls.append((list(seeds), set(exclude), count))
        free = [i for i in sorted(all_ids) if i not in exclude]
        return sorted(free, key=lambda i: (abs(i - seeds[-1]), i))[:count]

    recommend.calls = calls
    return recommend


def ahead(client) -> int:
    status = client.status()
    length = int(status["playlistlength"])
    return length - int(status["song"]) - 1 if "song" in status else length


class RadioThread:
    def __init__(self, radio: Radio) -> None:
        self.radio = radio
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            self.radio.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.radio.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the radio did not stop"
        if self.error is not None:
            raise self.error


def test_uri_map_is_relative_to_the_music_directory(tmp_path):
    music = tmp_path / "music"
    uris = uri_map(
        [(1, str(music / "A" / "x.mp3").encode()), (2, str(tmp_path / "elsewhere.mp3")),
         (3, str(music / "B C" / "ü.flac"))],
        music,
    )
    assert uris == {1: "A/x.mp3", 3: "B C/ü.flac"}


def test_once_tops_the_queue_up(library, mpd_factory):
    server = mpd_factory(library.lib_path)
    assert server.update() == TRACKS
    uris = uris_of(library)
    first = min(uris)
    client = server.client()
    client.add(uris[first])
    client.play(0)
    recommend = nearest_ids(uris)
    radio = Radio(MpdAddress(server.host, server.port), uris, recommend, LOG,
                  music_dir=str(library.lib_path), ahead=3, count=2, once=True)
    assert radio.run() == 3  # max(-n 2, the 3 missing)
    queue = [song["file"] for song in client.playlistinfo()]
    assert queue == [uris[first + k] for k in range(4)]
    assert recommend.calls[0][0] == [first] and first in recommend.calls[0][1]
    # Enough ahead: a second run adds nothing.
    radio = Radio(MpdAddress(server.host, server.port), uris, recommend, LOG,
                  music_dir=str(library.lib_path), ahead=3, once=True)
    assert radio.run() == 0 and len(client.playlistinfo()) == 4


def test_twenty_track_changes_and_a_restart_never_repeat(library, mpd_factory, plugin_log):
    server = mpd_factory(library.lib_path)
    server.update()
    uris = uris_of(library)
    by_uri = {uri: item_id for item_id, uri in uris.items()}
    start = sorted(uris)[len(uris) // 2]
    client = server.client()
    client.add(uris[start])
    client.play(0)
    radio = Radio(MpdAddress(server.host, server.port), uris, nearest_ids(uris), LOG,
                  music_dir=str(library.lib_path), ahead=3, count=2)
    runner = RadioThread(radio)
    played = [by_uri[client.currentsong()["file"]]]
    try:
        wait_until(lambda: ahead(client) >= 3, what="the first top-up")
        for step in range(20):
            if step == 10:
                server.restart()  # no state file: the queue is gone
                client = server.client()
                wait_until(lambda: ahead(client) >= 3, what="a top-up after the restart")
                client.play(0)
            else:
                client.next()
            wait_until(lambda: client.status().get("state") == "play"
                       and ahead(client) >= 3, what=f"a top-up after change {step}")
            played.append(by_uri[client.currentsong()["file"]])
            assert ahead(client) >= 3
        queued = [by_uri[s["file"]] for s in client.playlistinfo()]
    finally:
        runner.stop()
    assert len(played) == 21
    listened = played + queued[queued.index(played[-1]) + 1:]
    assert len(listened) == len(set(listened)), "a track came twice"
    assert set(radio.added) >= set(listened[1:])
    assert len(radio.added) == len(set(radio.added))
    assert any("lost the connection to MPD" in line for line in plugin_log)
    assert any(line.startswith("radio: queued") for line in plugin_log)


def test_tracks_mpd_does_not_know_are_skipped(library, mpd_factory):
    server = mpd_factory(library.lib_path)
    server.update()
    uris = uris_of(library)
    # A track imported after MPD's last database update.
    extra = library.lib_path / "new" / "late.ogg"
    extra.parent.mkdir()
    gen_audio.write(gen_audio.piece(99, 5.0), str(extra), tags={"title": "Late"})
    late = library.lib.add(Item.from_path(str(extra)))
    uris[late] = "new/late.ogg"
    first = min(i for i in uris if i != late)
    client = server.client()
    client.add(uris[first])

    def late_first(seeds, exclude, count):
        return [late] + [i for i in sorted(uris) if i not in exclude and i != late][:count]

    radio = Radio(MpdAddress(server.host, server.port), uris, late_first, LOG,
                  music_dir=str(library.lib_path), ahead=2, once=True)
    assert radio.run() == 2
    queue = [s["file"] for s in client.playlistinfo()]
    assert "new/late.ogg" not in queue and len(queue) == 3


def test_a_stopped_radio_leaves_quietly(library, mpd_factory):
    server = mpd_factory(library.lib_path)
    server.update()
    uris = uris_of(library)
    client = server.client()
    client.add(uris[min(uris)])
    radio = Radio(MpdAddress(server.host, server.port), uris, nearest_ids(uris), LOG,
                  music_dir=str(library.lib_path), ahead=2)
    runner = RadioThread(radio)
    # Nothing plays: the radio keeps 2 after the first, so 3 in all (3 ahead
    # by the helper's count, which counts every queued track then).
    wait_until(lambda: len(client.playlistinfo()) >= 3, what="the top-up")
    runner.stop()
    assert len(client.playlistinfo()) == 3


def test_a_busy_store_is_tried_again_at_the_next_change(library, mpd_factory, plugin_log):
    server = mpd_factory(library.lib_path)
    server.update()
    uris = uris_of(library)
    client = server.client()
    client.add(uris[min(uris)])
    nearest = nearest_ids(uris)
    calls = []

    def busy_once(seeds, exclude, count):
        calls.append(count)
        if len(calls) == 1:
            raise RecommendFailed("the store is busy")
        return nearest(seeds, exclude, count)

    address = MpdAddress(server.host, server.port)
    with pytest.raises(RadioError, match="the store is busy"):
        Radio(address, uris, busy_once, LOG, music_dir="x", once=True).run()
    assert len(client.playlistinfo()) == 1
    calls.clear()
    runner = RadioThread(Radio(address, uris, busy_once, LOG, music_dir="x", ahead=3))
    try:
        wait_until(lambda: calls, what="the first try")
        assert len(client.playlistinfo()) == 1
        client.add(uris[max(uris)])  # a change: the radio tries again
        # All three of its tracks (nothing plays, so the two queued count
        # as ahead: waiting for 3 ahead would stop it after its first).
        wait_until(lambda: len(client.playlistinfo()) >= 2 + 3, what="the second try")
    finally:
        runner.stop()
    assert len(calls) == 2 and len(client.playlistinfo()) == 2 + 3  # -n: --ahead
    assert any("the store is busy (trying again at the next change)" in line
               for line in plugin_log)


def test_an_empty_queue_needs_a_start(library, mpd_factory):
    server = mpd_factory(library.lib_path)
    server.update()
    uris = uris_of(library)
    address = MpdAddress(server.host, server.port)
    with pytest.raises(RadioError, match="nothing is playing or queued"):
        Radio(address, uris, nearest_ids(uris), LOG, music_dir="x", once=True).run()
    radio = Radio(address, uris, nearest_ids(uris), LOG, music_dir="x", once=True,
                  start_seeds=[max(uris)])
    assert radio.run() == 3
    queue = [s["file"] for s in server.client().playlistinfo()]
    assert uris[max(uris)] not in queue and uris[max(uris) - 1] == queue[0]


def test_cannot_start_one_line_each(library, mpd_factory, tmp_path):
    uris = uris_of(library)
    music = str(library.lib_path)

    def start(address, uris=uris, music=music):
        radio = Radio(address, uris, nearest_ids(uris), LOG, music_dir=music, once=True)
        with pytest.raises(RadioError) as info:
            radio.run()
        message = str(info.value)
        assert "\n" not in message
        return info.value

    refused = start(MpdAddress("127.0.0.1", free_port()))
    assert isinstance(refused, MpdUnreachable) and "connection refused" in str(refused)
    unknown = start(MpdAddress("no-such-host.invalid", 6600))
    assert "unknown host" in str(unknown)

    locked = mpd_factory(library.lib_path, password="s3cret")
    locked.update()
    assert "refused the password" in str(start(MpdAddress("127.0.0.1", locked.port,
                                                          password="wrong")))
    assert "does not let this client add" in str(start(MpdAddress("127.0.0.1", locked.port)))
    client_ok = Radio(MpdAddress("127.0.0.1", locked.port, password="s3cret"), uris,
                      nearest_ids(uris), LOG, music_dir=music, once=True,
                      start_seeds=[min(uris)])
    assert client_ok.run() == 3

    # An MPD whose music directory is another folder knows none of these.
    other = tmp_path / "other-music"
    other.mkdir()
    blind = mpd_factory(other)
    blind.update()
    assert "knows none of the library's tracks" in str(
        start(MpdAddress("127.0.0.1", blind.port)))
    # A library outside the folder taken for MPD's music directory.
    assert "no library track lies inside" in str(
        start(MpdAddress("127.0.0.1", blind.port), uris={}, music=str(other)))


# -- beet radio: the command in its own process --------------------------------


@pytest.fixture(scope="module")
def beet_library(music, model_dir, tmp_path_factory):
    """The 36 tracks imported (embedded) into a library of a real ``beet``
    process; MPD's music directory will be its ``directory``."""
    import yaml
    from conftest import BeetProcess

    process = BeetProcess(tmp_path_factory.mktemp("radio-beets"), model_dir)
    done = process.run("import", "-A", "-q", str(music), timeout=900)
    assert done.returncode == 0, done.stderr
    process.music = process.root / "music"
    process.config_path = process.beetsdir / "config.yaml"
    process.base_config = yaml.safe_load(process.config_path.read_text())
    return process


def set_mpd_config(process, **mpd):
    import yaml

    config = dict(process.base_config, mpd=mpd)
    process.config_path.write_text(yaml.safe_dump(config))


def files_of(client) -> list[str]:
    return [song["file"] for song in client.playlistinfo()]


def one_line_error(done) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_beet_radio_once(beet_library, mpd_factory):
    server = mpd_factory(beet_library.music)
    assert server.update() == TRACKS
    set_mpd_config(beet_library, host="127.0.0.1", port=server.port)
    client = server.client()
    first = files_of_library(beet_library)[0]
    client.add(first)
    client.play(0)
    done = beet_library.run("-v", "radio", "--once", "--ahead", "4")
    assert done.returncode == 0, done.stderr
    queue = files_of(client)
    assert len(queue) == 5 and len(set(queue)) == 5 and queue[0] == first
    assert sum("radio: queued" in line for line in done.stderr.splitlines()) == 4
    # --where keeps to its tracks, and an empty queue starts from QUERY.
    client.clear()
    done = beet_library.run("radio", "--once", "-n", "3", "--where",
                            "artist:Chord Collective", "title:Track 0")
    assert done.returncode == 0, done.stderr
    queue = files_of(client)
    assert len(queue) == 3 and all(f.startswith("Chord Collective/") for f in queue)


def test_beet_radio_through_twenty_changes_and_a_restart(beet_library, mpd_factory):
    server = mpd_factory(beet_library.music)
    server.update()
    set_mpd_config(beet_library, host="127.0.0.1", port=server.port)
    client = server.client()
    client.add(files_of_library(beet_library)[7])
    client.play(0)
    radio = beet_library.popen("-v", "radio", "--ahead", "3", "-n", "2")
    played = [client.currentsong()["file"]]
    try:
        wait_until(lambda: ahead(client) >= 3, timeout=60, what="the first top-up")
        for step in range(20):
            if step == 10:
                server.restart()
                client = server.client()
                wait_until(lambda: ahead(client) >= 3, timeout=60,
                           what="a top-up after the restart")
                client.play(0)
            else:
                client.next()
            wait_until(lambda: client.status().get("state") == "play"
                       and ahead(client) >= 3, timeout=30, what=f"change {step}")
            played.append(client.currentsong()["file"])
        queue = files_of(client)
    finally:
        # SIGTERM, as a service manager stops it; Ctrl-C's SIGINT takes
        # the same way out (KeyboardInterrupt), but a suite started in the
        # background has SIGINT ignored, and so has every beet it starts.
        radio.send_signal(signal.SIGTERM)
        out, err = stopped(radio)
    assert radio.returncode == 0, err
    assert "Traceback" not in err and "radio stopped" in err
    listened = played + queue[queue.index(played[-1]) + 1:]
    assert len(listened) == len(set(listened)) >= 24, "a track came twice"
    queued = [line for line in err.splitlines() if "radio: queued" in line]
    assert len(queued) >= 23 and len(queued) == len(set(queued))
    assert sum("lost the connection to MPD" in line for line in err.splitlines()) == 1


def stopped(process, timeout: float = 30.0) -> tuple[str, str]:
    """The output of a process asked to stop; one that has not stopped
    within ``timeout`` is made to print where each of its threads is
    (faulthandler, on SIGABRT) and the test fails with that."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        out, err = process.communicate(timeout=30)
        pytest.fail(f"the process did not stop within {timeout:g} s; its stacks:\n{err[-6000:]}")


def test_beet_radio_cannot_start_one_line_each(beet_library, mpd_factory, tmp_path):
    set_mpd_config(beet_library, host="127.0.0.1", port=free_port())
    assert "connection refused" in one_line_error(beet_library.run("radio", "--once"))
    assert "unknown host" in one_line_error(
        beet_library.run("radio", "--once", "--host", "no-such-host.invalid"))
    locked = mpd_factory(beet_library.music, password="s3cret")
    locked.update()
    set_mpd_config(beet_library, host="127.0.0.1", port=locked.port, password="wrong")
    assert "refused the password" in one_line_error(beet_library.run("radio", "--once"))
    assert "does not let this client add" in one_line_error(
        beet_library.run("radio", "--once", "--password", ""))
    other = tmp_path / "elsewhere"
    other.mkdir()
    blind = mpd_factory(other)
    blind.update()
    set_mpd_config(beet_library, host="127.0.0.1", port=blind.port)
    assert "knows none of the library's tracks" in one_line_error(
        beet_library.run("radio", "--once"))
    assert "no library track lies inside" in one_line_error(
        beet_library.run("radio", "--once", "--music-directory", str(other)))
    # The right password, from the command line over the config.
    set_mpd_config(beet_library, host="127.0.0.1", port=locked.port, password="wrong")
    client = locked.client()
    client.add(files_of_library(beet_library)[0])
    done = beet_library.run("radio", "--once", "--password", "s3cret")
    assert done.returncode == 0, done.stderr
    assert len(files_of(client)) == 4


def files_of_library(process) -> list[str]:
    return sorted(str(p.relative_to(process.music)) for p in process.music.rglob("*.*"))
