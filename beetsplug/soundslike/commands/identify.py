"""``beet identify``: name the library track each recorded clip comes
from, where in it the clip sits, how sure the match is, and tracks that
sound alike. The work is :mod:`..identify`'s; this module presents it."""

from __future__ import annotations

import contextvars
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from beets import ui
from beets.ui import Subcommand

from ..compute import exit_without_final_collection
from .common import guarded, identifier_for, print_json

#: ``-`` names standard input, read to its end: a clip piped from a
#: recorder or ffmpeg. At most this many bytes, minutes of uncompressed
#: audio, where a clip needs seconds.
STDIN = "-"
MAX_STDIN_BYTES = 64 << 20


def command(plugin) -> Subcommand:
    cmd = Subcommand(
        "identify", help="name the library track a recorded clip comes from"
    )
    cmd.parser.usage += (
        "\n\nFor each CLIP (any audio file) print the matching library track,"
        "\nwhere in it the clip sits and how sure the match is, then tracks"
        "\nthat sound alike. CLIP - reads one clip from standard input"
        "\n(... | beet identify -)."
    )
    cmd.parser.usage = cmd.parser.usage.replace("[options]", "[options] CLIP...")
    cmd.parser.add_option(
        "--similar", type="int", default=None, metavar="N",
        help="also suggest N tracks in the same vibe (default: soundslike.similar)",
    )
    cmd.parser.add_option(
        "--json", action="store_true", default=False,
        help="print one JSON object per clip",
    )
    cmd.parser.add_format_option(target="item")

    cmd.func = guarded(plugin, run)
    return cmd


def run(plugin, lib, opts, args) -> None:
    """Identify every clip, one per core at a time, and print the answers
    in the order given; every clip that cannot be read is logged, and
    the command then fails."""
    if not args:
        raise ui.UserError("give one or more audio clips to identify")
    similar = opts.similar if opts.similar is not None else plugin.playlist_settings().similar
    if args.count(STDIN) > 1:
        raise ui.UserError("standard input (-) holds one clip: give - once")
    piped = read_stdin() if STDIN in args else None
    identifier = identifier_for(plugin, lib)

    def answer(clip: str):
        if clip == STDIN:
            return identifier.identify_bytes(piped, STDIN, similar)
        return identifier.identify_path(clip, similar)

    all_read = True
    workers = max(1, min(len(args), os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="identify")
    try:
        # Each clip runs in a copy of this thread's context: beets
        # resolves item paths through a context variable.
        futures = [pool.submit(contextvars.copy_context().run, answer, clip)
                   for clip in args]
        for clip, future in zip(args, futures):
            answer = future.result()
            if answer.error:
                all_read = False
                plugin.log.error("{}: {}", clip, answer.error)
            if opts.json:
                print_json(answer.as_json())
            elif not answer.error:
                print_answer(answer, lib, opts.format)
    finally:
        # Interrupted: the clips not started yet are dropped, not run.
        pool.shutdown(wait=True, cancel_futures=True)
        identifier.close()
        exit_without_final_collection()
    if not all_read:
        raise ui.UserError("soundslike: some clips could not be read (see above)")


def read_stdin() -> bytes:
    """The clip piped to ``beet identify -``, or a one-line error."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or sys.stdin.isatty():
        raise ui.UserError("- reads a clip from standard input: pipe one in "
                           "(... | beet identify -)")
    data = stream.read(MAX_STDIN_BYTES + 1)
    if not data:
        raise ui.UserError("standard input is empty: pipe a clip in (... | beet identify -)")
    if len(data) > MAX_STDIN_BYTES:
        raise ui.UserError(f"standard input holds more than {MAX_STDIN_BYTES >> 20} MB: "
                           "pipe a clip of seconds, not a whole recording")
    return data


def print_answer(answer, lib, fmt: str | None) -> None:
    """An :class:`~..identify.Answer` as text, or with a beets format."""
    match = answer.match
    if fmt:
        if match is None:
            ui.print_(f"{answer.clip}: not in your library")
            return
        item = lib.get_item(match["id"])
        item["offset"] = match["offset"]
        item["confidence"] = match["confidence"]
        item["version"] = match.get("version", False)
        ui.print_(format(item, fmt))
        return
    if match is None:
        ui.print_(f"{answer.clip}: not in your library")
    else:
        album = f" ({match['album']})" if match["album"] else ""
        speed = match.get("speed", 1.0)
        speed_note = f", played {100 * (speed - 1):+.1f}% speed" if abs(speed - 1) > 0.004 else ""
        # Another version of the piece (a re-arrangement, another mix) is
        # not the recording: it is named as what it is a version of.
        kind = "a version of " if match.get("version") else ""
        ui.print_(
            f"{answer.clip}: {kind}{label(match)}{album}\n"
            f"  at {clock(match['offset'])}, confidence {100 * match['confidence']:.0f}%"
            f"{speed_note}"
        )
    if answer.similar:
        heading = "  sounds like:" if answer.sounds_like else "  same vibe:"
        ui.print_(heading)
        for n, entry in enumerate(answer.similar, 1):
            ui.print_(f"    {n}. {label(entry)}  ({entry['score']:.2f})")


def label(entry: dict) -> str:
    """"Artist - Title", or the file name for an untagged file."""
    if entry.get("artist") and entry.get("title"):
        return f"{entry['artist']} - {entry['title']}"
    return entry.get("title") or os.path.basename(entry.get("path", "")) or "?"


def clock(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{secs:04.1f}"
