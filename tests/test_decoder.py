"""The decoding processes: one serves many files; a process that hangs or
dies on a file costs that file a one-line reason and nothing else; one
found dead while idle is replaced at no file's cost; an interrupted beets
leaves none behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import gen_audio

from beetsplug.soundslike.audio import AudioError, decode, decode_bytes
from beetsplug.soundslike.decoder import POOL, DecodeFailure


def decoders() -> set[int]:
    """Pids of this process's decoding processes."""
    pids = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as handle:
            pids.update(int(p) for p in handle.read().split())
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"decodeworker.py" in handle.read():
                    found.add(pid)
        except FileNotFoundError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def piece(tmp_path):
    path = tmp_path / "piece.flac"
    gen_audio.write(gen_audio.piece(5, 6.0), str(path))
    return path


def test_one_process_serves_many_files(piece):
    first = decode(piece).samples
    before = decoders()
    assert before, "a decoding process waits for the next file"
    for _ in range(5):
        again = decode(piece).samples
        assert np.array_equal(again, first)
        assert np.array_equal(decode_bytes(piece.read_bytes()).samples, first)
    assert decoders() == before


def test_a_process_dead_while_idle_is_replaced_without_failing_a_file(piece):
    expected = decode(piece).samples
    for pid in decoders():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert np.array_equal(decode(piece).samples, expected)


def test_a_hanging_decoder_is_stopped_and_the_next_file_reads(piece):
    expected = decode(piece).samples
    stuck = decoders()
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)  # as if it hung on a damaged file
    request = {"path": str(piece), "rate": 16000, "max_seconds": None}
    with pytest.raises(DecodeFailure, match=r"^decoding took longer than 1 s$"):
        POOL.decode(request, None, timeout=1.0)
    time.sleep(0.2)
    # The process that was given the file is gone; any other stopped one
    # was never asked, and is still waiting.
    assert sum(not alive(pid) for pid in stuck) == 1
    for pid in stuck:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert np.array_equal(decode(piece).samples, expected)


def test_a_decoder_that_dies_on_a_file_fails_only_that_file(piece):
    expected = decode(piece).samples
    procs = decoders()
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)
    outcome = {}

    def read():
        try:
            decode(piece)
        except AudioError as exc:
            outcome["error"] = str(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the file is sent: now the process crashes
    for pid in procs:
        os.kill(pid, signal.SIGKILL)
    reader.join(10)
    assert outcome == {"error": "not a readable audio file (invalid or unknown data)"}
    assert np.array_equal(decode(piece).samples, expected)


def test_an_interrupted_beets_leaves_no_decoder_behind(piece, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, time\n"
        "from beetsplug.soundslike.audio import decode\n"
        f"decode({str(piece)!r})\n"
        "print(open(f'/proc/{os.getpid()}/task/{os.getpid()}/children').read(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    children = [int(p) for p in proc.stdout.readline().split()]
    assert children
    proc.send_signal(signal.SIGKILL)  # not even an exit handler runs
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)


def test_names_that_are_not_utf8_or_look_like_protocols(piece, tmp_path, monkeypatch):
    expected = decode(piece).samples
    odd = tmp_path / "odd"
    odd.mkdir()
    latin1 = os.path.join(os.fsencode(odd), b"caf\xe9.flac")
    with open(latin1, "wb") as handle:
        handle.write(piece.read_bytes())
    (odd / "concat:x.flac").write_bytes(piece.read_bytes())
    monkeypatch.chdir(odd)
    assert np.array_equal(decode(latin1).samples, expected)
    # Relative, it would name FFmpeg's concat protocol, not the file.
    assert np.array_equal(decode("concat:x.flac").samples, expected)


def test_an_upload_to_a_decoder_that_stopped_reading_does_not_hold_beets(piece):
    expected = decode(piece).samples
    data = piece.read_bytes() * 40  # megabytes: more than a pipe holds
    assert len(data) > 1 << 20
    stuck = decoders()
    for pid in stuck:
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(DecodeFailure, match=r"^decoding took longer than 1 s$"):
        POOL.decode({"size": len(data), "rate": 16000, "max_seconds": None}, data, timeout=1.0)
    assert time.monotonic() - started < 5
    for pid in stuck:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert np.array_equal(decode(piece).samples, expected)


def test_the_decoding_process_reads_a_seek_without_numpy(piece):
    """A seek's first frame is cut before resampling; the process does it
    in FFmpeg's own queue, so it never pays numpy's import (60 ms, the
    first seek of a single ``beet identify CLIP``)."""
    worker = os.path.join(os.path.dirname(decode.__code__.co_filename), "decodeworker.py")
    script = (
        "import runpy, sys\n"
        f"w = runpy.run_path({worker!r})\n"
        f"samples, _, _ = w['read']({str(piece)!r}, 8000, 1.37, 8000, False)\n"
        "assert len(samples) == 4 * 8000, len(samples)\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
