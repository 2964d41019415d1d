"""The decoding process: reads audio files (or uploaded bytes) with PyAV,
FFmpeg's libraries, and answers with mono float32 samples.

It runs as a separate process that serves many files, one at a time, so a
broken file can crash or hang only this process, never beets, and no file
pays for a process start (:mod:`.decoder` runs and replaces it). It is run
by its path, not imported: it needs nothing of beets or of the plugin, so
it starts in the time it takes to load PyAV.

Protocol, over stdin and stdout:

* on start, one JSON line: ``{"ready": true}``, or ``{"ok": false,
  "reason": ...}`` when PyAV cannot be loaded;
* each request: one JSON line (``path`` or ``size``, ``rate``, ``start``,
  ``max_seconds``, ``probe``, or ``windows``), followed by ``size`` bytes
  for an upload;
* each answer: one JSON line, ``{"ok": true, "count": N, "duration": D,
  "damaged": B}`` (B: frames that would not decode were skipped) followed
  by N little-endian float32 samples, or ``{"ok": false,
  "reason": ...}`` with one of the reasons of docs/troubleshooting.md.

The process ends when stdin closes (beets has finished, or died).
"""

import io
import json
import math
import os
import signal
import sys

#: How FFmpeg words data it cannot make sense of: every such error is the
#: one documented reason for a file that is not readable audio.
UNREADABLE = "not a readable audio file (invalid or unknown data)"


class Reason(Exception):
    """A file that cannot be read, and the documented reason why."""


def reply(header: dict, payload: bytes = b"") -> None:
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode() + b"\n")
    if payload:
        out.write(payload)
    out.flush()


def reason_for(exc: BaseException) -> str:
    """The one-line reason for a failure to open or decode."""
    import av

    if isinstance(exc, (FileNotFoundError, av.error.FileNotFoundError)):
        return "file not found"
    if isinstance(exc, (PermissionError, av.error.PermissionError)):
        return "permission denied"
    if isinstance(exc, av.error.DecoderNotFoundError):
        return "unsupported audio codec"
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 5:
        return "cannot read the file (input/output error): check the disk"
    return UNREADABLE


def source_of(request: dict, data: bytes | None):
    """What PyAV opens: the bytes of an upload (seekable, so an MP4 whose
    index sits at its end reads too), or a path."""
    if data is not None:
        return io.BytesIO(data)
    path = request["path"]
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # not UTF-8 on disk: open it here, by bytes
        return open(os.fsencode(path), "rb")
    return path


def decode(request: dict, data: bytes | None) -> tuple[bytearray, float | None, bool]:
    """Samples (float32, as bytes), the file's duration (None unless
    probed) and whether damaged frames were skipped."""
    rate = int(request["rate"])
    start = float(request.get("start") or 0.0)
    limit = request.get("max_seconds")
    cap = None if limit is None else int(round(float(limit) * rate))
    source = source_of(request, data)
    try:
        if request.get("windows"):
            return read_windows(source, rate, request["windows"]), None, False
        return read(source, rate, start, cap, bool(request.get("probe")))
    finally:
        if not isinstance(source, str):
            source.close()


def read(source, rate: int, start: float, cap: int | None, probe: bool):
    """:func:`decode`'s work, on an opened ``source``."""
    import av  # here, not above: :func:`serve` reports a PyAV that cannot load

    with av.open(source, mode="r") as container:
        streams = container.streams.audio
        if not streams:
            raise Reason("no audio stream in file")
        stream = streams[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            raise Reason("unsupported audio codec")
        duration = None
        if probe:
            if container.duration is not None:
                duration = container.duration / 1_000_000
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
        # Times count from the file's first sample, as ffmpeg counts them
        # (an MP3's first frame, for one, is stamped after its encoder delay).
        origin = (container.start_time or 0) / 1_000_000
        if start > 0:
            container.seek(int((origin + start) * 1_000_000), backward=True, any_frame=False)
        out = Output(rate, cap)
        trimming = start > 0  # until the first frame that reaches ``start``
        at = origin + start  # where the next frame starts when it has no stamp
        decoded = damaged = False
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                damaged = True  # a damaged frame: go on, as ffmpeg does
                continue
            for frame in frames:
                decoded = True
                skip = 0
                if trimming:
                    # Each frame by its own stamp: the first frame after a
                    # seek can be stamped inexactly (Vorbis), the next ones not.
                    if frame.pts is not None:
                        at = float(frame.pts * frame.time_base)
                    skip = max(0, int(round((origin + start - at) * frame.sample_rate)))
                    at += frame.samples / frame.sample_rate
                    if skip >= frame.samples:
                        continue
                    trimming = False
                out.add(frame, skip)
            if out.full():
                break
        out.finish()
        if not decoded and (damaged or start <= 0):
            raise Reason(UNREADABLE)  # a stream, but nothing in it decodes
    return out.samples, duration, damaged


#: Codecs whose packets' durations are exact (each frame's header says how
#: many samples it decodes to) and whose decoders forget everything within
#: a few frames (no state beyond the previous frames' overlap and bit
#: reservoir), checked bit for bit against whole decodes: far from any
#: window their packets are counted, not decoded. Not Vorbis (Ogg stamps
#: its packets' durations inexactly) nor AAC (its noise substitution draws
#: from a generator that runs through the whole stream).
COUNTABLE = {"mp3", "mp3float", "flac"}
#: Source samples decoded (and dropped) after counted packets, before the
#: samples a window needs: the decoder's state is the whole decode's again.
SETTLE = 16384
#: Packets in a row whose decoded samples matched their stated duration
#: before any is counted instead of decoded (a file's first packets can
#: differ: an MP3's encoder delay, AAC's priming).
TRUSTED = 8


def countable(stream) -> bool:
    name = stream.codec_context.name or ""
    return name in COUNTABLE or name.startswith("pcm_")


def read_windows(source, rate: int, windows: list) -> bytearray:
    """The samples ``[start, start + count)`` of each of ``windows`` (at
    ``rate``; they may overlap), the same as those of a whole
    decode: the file is read from its start and every sample counted
    (no seek, whose landing can be stamped inexactly), but only the
    stretches around the windows are resampled. Each stretch starts a
    little before its window, at a source sample where the two rates'
    grids meet, so its resampler runs in the same phase as the whole
    decode's did, and its first samples (the resampler filling) are cut.
    Where a codec's packet durations are exact (:func:`countable`), the
    packets far before the next window are counted, not decoded (a
    damaged one among them would shift the windows after it: the whole
    decode drops it)."""
    import av

    with av.open(source, mode="r") as container:
        streams = container.streams.audio
        if not streams:
            raise Reason("no audio stream in file")
        stream = streams[0]
        length_of = packet_lengths(stream) if countable(stream) else None
        stretches = None
        at = 0  # source samples decoded (or counted) so far
        trusted = 0  # packets in a row that decoded to their stated length
        refill = None  # after counted packets: decode, but count, up to this sample
        out = bytearray()
        for packet in container.demux(stream):
            length = length_of(packet) if length_of is not None else None
            if length and trusted >= TRUSTED and stretches is not None:
                ahead = min((s.first for s in stretches if not s.done(at)), default=None)
                if ahead is not None and at + length <= ahead - SETTLE:
                    at += length
                    refill = ahead  # the packets decoded next bring the decoder back
                    continue
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                frames = None  # a damaged frame: go on, as the whole decode does
            if refill is not None:
                # The first packets after counted ones set the decoder's state
                # back to the whole decode's (at least SETTLE samples, all
                # before the next window's stretch): counted by their stated
                # length, their samples dropped.
                if not length:
                    raise Reason("a packet of unknown length")  # the caller reads it whole
                if at + length <= refill:
                    at += length
                    continue
                refill = None
            if frames is None:
                trusted = 0
                continue
            decoded = 0
            for frame in frames:
                if stretches is None:
                    stretches = [Stretch(frame.sample_rate, rate, *w) for w in windows]
                for stretch in stretches:
                    stretch.add(frame, at)
                at += frame.samples
                decoded += frame.samples
            trusted = trusted + 1 if length and decoded == length else 0
            if stretches and all(stretch.done(at) for stretch in stretches):
                break
        for stretch in stretches or ():
            out += stretch.samples()
    return out


def packet_lengths(stream):
    """A function giving the samples a packet of ``stream`` decodes to by
    its stated duration, or None (integer arithmetic: one call a packet)."""
    rate = stream.codec_context.sample_rate
    base = stream.time_base
    if not rate or base is None:
        return lambda packet: None
    scale, unit = base.numerator * rate, base.denominator

    def length(packet) -> int | None:
        duration = packet.duration
        if not duration or duration <= 0:
            return None
        whole, part = divmod(duration * scale, unit)
        return None if part else whole

    return length


class Stretch:
    """One window of :func:`read_windows`: the source samples it needs and
    their resampling."""

    #: Output samples resampled before the window (the resampler's filter
    #: is far shorter: these are cut).
    LEAD = 1024

    def __init__(self, source_rate: int, rate: int, start: int, count: int) -> None:
        grid = math.gcd(source_rate, rate)
        out_step, in_step = rate // grid, source_rate // grid
        steps = max(0, start - self.LEAD) // out_step
        self.cut = start - steps * out_step  # output samples before the window
        self.first = steps * in_step  # the source sample the stretch begins at
        self.last = -(-(start + count) * source_rate // rate) + self.LEAD * source_rate // rate
        self.output = Output(rate, self.cut + count)

    def done(self, at: int) -> bool:
        return at >= self.last or self.output.full()

    def add(self, frame, at: int) -> None:
        """Queue the part of ``frame`` (whose first sample is source sample
        ``at``) that falls in this stretch."""
        head = self.first - at
        tail = self.last - at
        if tail <= 0 or head >= frame.samples or self.output.full():
            return
        self.output.add(frame, max(0, head), min(frame.samples, tail))

    def samples(self) -> bytes:
        self.output.finish()
        return bytes(self.output.samples[4 * self.cut:])


class Output:
    """Decoded frames, resampled to mono float32 at ``rate`` in blocks of
    about :data:`BLOCK` samples (one resampler call a frame costs more
    than the conversion itself: MP3 and Vorbis frames are small; frames
    are gathered in FFmpeg's own queue, not in Python), at most ``cap``
    samples in all."""

    #: Samples, at the file's rate, gathered before each resampler call.
    BLOCK = 32768

    def __init__(self, rate: int, cap: int | None) -> None:
        self.rate = rate
        self.cap = cap
        self.samples = bytearray()
        self.count = 0
        self.kind = None  # (format, layout, rate) of the frames queued
        self.resampler = self.queue = None

    def add(self, frame, skip: int = 0, end: int | None = None) -> None:
        """Queue ``frame`` less its first ``skip`` samples (and those from
        ``end`` on): a seek lands on a frame that starts before the time
        asked for, and the samples before that time are cut at the file's
        own rate, before resampling, as ffmpeg cuts them."""
        import av

        kind = (frame.format.name, frame.layout.name, frame.sample_rate)
        if kind != self.kind:  # the stream changed its layout: start anew
            self.finish()
            self.kind = kind
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self.queue = av.AudioFifo()
        frame.pts = None  # the queue checks stamps for gaps; the samples are what count
        stop = frame.samples if end is None else min(end, frame.samples)
        if skip or stop < frame.samples:
            # Cut in a queue of its own, not through numpy: a process that
            # never imports numpy answers its first seek 60 ms sooner.
            if stop <= skip:
                return
            cut = av.AudioFifo()
            cut.write(frame)
            if skip:
                cut.read(skip)
            frame = cut.read(stop - skip)
            frame.pts = None
        self.queue.write(frame)
        due = self.BLOCK
        if self.cap is not None:  # no more than what the cap still takes
            due = min(due, int((self.cap - self.count) * kind[2] / self.rate) + 64)
        if self.queue.samples >= due:
            self.keep(self.resampler.resample(self.queue.read()))

    def full(self) -> bool:
        return self.cap is not None and self.count >= self.cap

    def keep(self, frames) -> None:
        for frame in frames:
            n = frame.samples if self.cap is None else min(frame.samples, max(0, self.cap - self.count))
            if n:
                self.samples += memoryview(frame.planes[0])[: 4 * n]
            self.count += n

    def finish(self) -> None:
        """Resample what is queued, then what the resampler holds back."""
        if self.resampler is None or self.full():
            return
        if self.queue.samples:
            self.keep(self.resampler.resample(self.queue.read()))
        if not self.full():
            self.keep(self.resampler.resample(None))


def serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for beets to handle
    try:
        import av

        av.logging.set_level(None)  # damaged frames are skipped, not shown
    except Exception:  # noqa: BLE001 - any failure to load is reported
        reply({"ok": False, "reason": "cannot load the audio decoder (pip install av)"})
        return
    reply({"ready": True})
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        request = json.loads(line)
        data = stdin.read(request["size"]) if "size" in request else None
        try:
            samples, duration, damaged = decode(request, data)
        except Reason as exc:
            reply({"ok": False, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - every failure is a reason
            reply({"ok": False, "reason": reason_for(exc)})
        else:
            reply({"ok": True, "count": len(samples) // 4, "duration": duration,
                   "damaged": damaged}, samples)


if __name__ == "__main__":
    serve()
