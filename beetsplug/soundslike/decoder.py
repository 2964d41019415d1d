"""Decoding processes kept running: each serves many files, so no file
pays for a process start, and a broken file can crash or hang only its
decoding process, never beets.

A process that crashes on a file, or takes longer than the file's time
allowance, is stopped and the file gets a one-line reason; the next file
gets a fresh process. A process that was found dead before it was given a
file is replaced at no file's cost. Idle processes wait for the next file
(as many as the machine has cores) and end when beets does.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

import numpy as np

# The reason for a file on which the decoding process died is the one for
# data FFmpeg reports as invalid: the file is badly damaged.
from .decodeworker import UNREADABLE

#: The decoding process's program (:mod:`.decodeworker`), run by its path.
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decodeworker.py")
#: Seconds a new process may take to load PyAV and say it is ready.
START_TIMEOUT_S = 60.0
#: The reason when no decoding process can be started.
NO_DECODER = "the audio decoder could not start"


class DecodeFailure(Exception):
    """A file the decoding process could not read; the message is its reason."""


class _Gone(Exception):
    """The process was dead before it was given the file: not the file's fault."""


class _Crashed(Exception):
    """The process died while it read a file."""


class _NoDecoder(DecodeFailure):
    """The process cannot load PyAV: no file can be read."""


class _Process:
    """One decoding process and the pipes to it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-s", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0, close_fds=True,
        )
        # Writes never block: a process that stops reading is timed out.
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.ready = False
        self._pending = b""

    def request(self, header: dict, data: bytes | None, timeout: float):
        """Send one file and read its answer: (samples, the answer's
        fields: ``duration``, ``damaged``). Raises
        :class:`DecodeFailure` with the reason, :class:`_Crashed`,
        :class:`_Gone` or :class:`TimeoutError`."""
        deadline = time.monotonic() + timeout
        if not self.ready:
            try:
                hello = self._line(time.monotonic() + START_TIMEOUT_S)
            except (_Crashed, TimeoutError):
                raise _Gone()
            if not hello.get("ready"):
                raise _NoDecoder(hello.get("reason", NO_DECODER))
            self.ready = True
        if self.proc.poll() is not None:
            raise _Gone()
        try:
            self._send(json.dumps(header).encode() + b"\n", deadline)
            if data is not None:
                self._send(data, deadline)
        except (BrokenPipeError, ConnectionResetError):  # it died while idle
            raise _Gone()
        answer = self._line(deadline)
        if not answer.get("ok"):
            raise DecodeFailure(answer.get("reason", UNREADABLE))
        samples = np.empty(int(answer["count"]), np.float32)
        self._read_into(memoryview(samples).cast("B"), deadline)
        return samples, answer

    def _send(self, payload: bytes, deadline: float) -> None:
        """Write ``payload`` by ``deadline``: an upload of megabytes does not
        fit in the pipe, and a process that stopped reading must not hold
        beets."""
        view = memoryview(payload)
        fd = self.proc.stdin.fileno()
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError()
            try:
                view = view[os.write(fd, view[:1 << 16]):]
            except BlockingIOError:
                continue

    def _line(self, deadline: float) -> dict:
        while b"\n" not in self._pending:
            self._pending += self._chunk(deadline, 4096)
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def _read_into(self, view: memoryview, deadline: float) -> None:
        done = min(len(self._pending), len(view))
        view[:done] = self._pending[:done]
        self._pending = self._pending[done:]
        while done < len(view):
            chunk = self._chunk(deadline, min(len(view) - done, 1 << 20))
            view[done:done + len(chunk)] = chunk
            done += len(chunk)

    def _chunk(self, deadline: float, size: int) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
            raise TimeoutError()
        chunk = os.read(self.proc.stdout.fileno(), size)
        if not chunk:
            raise _Crashed()
        return chunk

    def close(self, kill: bool = False, wait: bool = True) -> None:
        """End the process: killed, or told by its stdin closing; and
        unless not to ``wait``, reaped (within 5 s, else killed)."""
        if kill:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if not wait:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()



class DecoderPool:
    """Decoding processes shared by every thread of this beets process."""

    def __init__(self) -> None:
        self._idle: list[_Process] = []
        self._lock = threading.Lock()
        self._closed = False

    def warm_up(self) -> None:
        """Start a process now, to be ready when the first file comes (it
        loads PyAV on another core while beets opens its indexes)."""
        with self._lock:
            if not self._idle and not self._closed:
                self._idle.append(_Process())

    def decode(self, header: dict, data: bytes | None, timeout: float):
        """(samples, the answer's fields: ``duration`` or None, ``damaged``)
        of one file or upload, or a
        :class:`DecodeFailure` with a one-line reason."""
        for _ in range(3):
            process = self._take()
            try:
                result = process.request(header, data, timeout)
            except _Gone:
                process.close(kill=True)
                continue
            except _Crashed:
                process.close(kill=True)
                raise DecodeFailure(UNREADABLE)
            except TimeoutError:
                process.close(kill=True)
                raise DecodeFailure(f"decoding took longer than {timeout:.0f} s")
            except _NoDecoder:
                process.close(kill=True)
                raise
            except DecodeFailure:
                self._give_back(process)
                raise
            except BaseException:  # interrupted mid-answer: the pipe is unusable
                process.close(kill=True)
                raise
            self._give_back(process)
            return result
        raise DecodeFailure(NO_DECODER)

    def _take(self) -> _Process:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Process()

    def _give_back(self, process: _Process) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < (os.cpu_count() or 1):
                self._idle.append(process)
                return
        process.close()

    def close(self) -> None:
        """End the idle processes (at exit; a busy one ends with its file).
        Their stdin closes and they end on their own: beets does not wait
        for them (each would cost it the 15-20 ms of its own exit), and
        whatever beets exits into reaps them."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for process in idle:
            process.close(wait=False)


POOL = DecoderPool()
atexit.register(POOL.close)
