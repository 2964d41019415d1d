"""``beet identify`` on a real library of generated pieces: the right track
and offset for a degraded clip, "not in your library" for a stranger,
same-vibe suggestions from the store, every output format, and one line
for each clip that cannot be read."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from bad_files import write_bad_files
from conftest import FORMATS, BeetProcess, copy_pieces, gen_audio, user_error

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]
RATE = gen_audio.RATE


def clip_of(seed: int, start: float, seconds: float, snr_db: float | None, path, rate=RATE):
    samples = gen_audio.piece(seed, 24.0)[int(start * RATE): int((start + seconds) * RATE)]
    if snr_db is not None:
        samples = gen_audio.add_noise(samples, snr_db, seed=seed)
    gen_audio.write(samples, str(path), rate=rate)
    return str(path)


def identify_json(env, *args):
    env.beet("identify", "--json", *args)
    return [json.loads(line) for line in env.output.splitlines()]


def test_noisy_reencoded_offset_clip_names_track_and_offset(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    # 6 s from 0:09.3 of piece 4, pink noise at 5 dB SNR, AAC at 8 kHz.
    clip = tmp_path / "phone.m4a"
    samples = gen_audio.piece(4, 24.0)[int(9.3 * RATE): int(15.3 * RATE)]
    noisy = gen_audio.add_noise(samples, 5.0, seed=3)
    gen_audio.write(noisy, str(clip))
    (answer,) = identify_json(beets_env, "--similar", "3", str(clip))
    match = answer["match"]
    assert match["title"] == "Piece 4"
    assert abs(match["offset"] - 9.3) <= 0.5
    assert 0.5 < match["confidence"] <= 1.0
    assert set(match) >= {"id", "artist", "title", "album", "path", "offset", "confidence"}
    assert len(answer["similar"]) == 3
    assert match["id"] not in {s["id"] for s in answer["similar"]}
    for suggestion in answer["similar"]:
        assert set(suggestion) >= {"id", "artist", "title", "path", "score"}


def test_clips_played_fast_or_slow_are_found_with_their_speed(beets_env, audio_dir, tmp_path):
    # Resampled: tempo and pitch change together, as on a turntable or a
    # DJ's pitch fader: 2 % (radio), 6 % fast and 8 % slow, all in one
    # command, answered in the order given.
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    samples = gen_audio.piece(2, 24.0)[int(6 * RATE): int(16 * RATE)]
    clips = []
    for speed in (1.02, 1.06, 0.92):
        changed = np.interp(np.arange(0, len(samples) - 1, speed), np.arange(len(samples)), samples)
        clip = tmp_path / f"speed{speed}.mp3"
        gen_audio.write(gen_audio.add_noise(changed[: 6 * RATE].astype(np.float32), 15.0), str(clip))
        clips.append(str(clip))
    answers = identify_json(beets_env, "--similar", "0", *clips)
    assert [a["clip"] for a in answers] == clips
    for answer, speed in zip(answers, (1.02, 1.06, 0.92)):
        assert answer["match"]["title"] == "Piece 2", answer
        assert abs(answer["match"]["offset"] - 6.0) <= 0.5
        assert abs(answer["match"]["speed"] / speed - 1) < 0.005
    out = beets_env.beet("identify", "--similar", "0", clips[1])
    assert re.search(r"confidence \d+%, played \+(5\.9|6\.0|6\.1)% speed", out), out



def test_identify_answers_while_another_process_holds_the_vector_store(beets_env, audio_dir,
                                                                        tmp_path):
    # `beet embed` holds a collection's lock while it writes vectors; a
    # clip whose fingerprint is the item's own file is answered without
    # the store (suggestions need it, and wait for it as before).
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    beets_env.reconfigure(timeout=1)
    clip = clip_of(3, 7.0, 6.0, 10.0, tmp_path / "clip.flac")
    locks = sorted((beets_env.settings.store_dir / "qdrant").glob(".*.lock"))
    assert locks
    handles = [open(path, "a+") for path in locks]
    try:
        for handle in handles:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (answer,) = identify_json(beets_env, "--similar", "0", clip)
        assert answer["match"]["title"] == "Piece 3", answer
        assert abs(answer["match"]["offset"] - 7.0) <= 0.5
        assert "busy" in user_error(beets_env, "identify", "--similar", "2", clip)
    finally:
        for handle in handles:
            handle.close()

def test_unknown_clip_is_not_in_library(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    stranger = clip_of(77, 3.0, 6.0, None, tmp_path / "stranger.ogg")
    out = beets_env.beet("identify", "--similar", "0", stranger)
    assert out.strip() == f"{stranger}: not in your library"
    # With suggestions, the clip's own sound (the model) says what it is like.
    (answer,) = identify_json(beets_env, "--similar", "2", stranger)
    assert answer["match"] is None and len(answer["similar"]) == 2


def test_verbose_identify_logs_the_evidence_for_and_against(beets_env, audio_dir, tmp_path, plugin_log):
    # "Why was my clip not found?": with -v the best candidate's peaks and
    # the best unrelated track's are logged, answered or not.
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    known = clip_of(3, 8.0, 5.0, 10.0, tmp_path / "known.flac")
    drowned = clip_of(2, 8.0, 3.0, -12.0, tmp_path / "drowned.flac")
    out = beets_env.beet("-v", "identify", "--similar", "0", known, drowned)
    (line,) = [line for line in plugin_log if line.startswith(f"{known}: best candidate item ")]
    assert "of its peaks in the clip" in line and line.endswith("confidence 1.000")
    titles = {item.id: item.title for item in beets_env.lib.items()}
    assert titles[int(line.split("item ")[1].split()[0])] == "Piece 3"
    # Drowned in noise: the clip's best candidate is logged and withheld,
    # or the log says that no track had enough landmarks to be one.
    (line,) = [line for line in plugin_log
               if line.startswith((f"{drowned}: best candidate", f"{drowned}: no library track"))]
    if line.startswith(f"{drowned}: best candidate"):
        assert float(line.rsplit("confidence ", 1)[1]) < 0.5
    else:
        assert line == f"{drowned}: no library track shares 5 landmarks at one place and speed with the clip"
    assert f"{drowned}: not in your library" in out


def test_clip_talked_over_is_found_by_a_second_look_at_the_audio(beets_env, audio_dir, tmp_path,
                                                               plugin_log):
    # Four people talking 9 dB louder than piece 1: too few of its peaks
    # survive for the landmarks to be sure; its own audio settles it.
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    clip = str(tmp_path / "party.flac")
    music = gen_audio.piece(1, 24.0)[8 * RATE: 13 * RATE]
    gen_audio.write(gen_audio.mix(music, gen_audio.babble(5.0, seed=12), -9.0), clip)
    threadpool_limits(limits=2, user_api="blas")  # what OpenBLAS starts with on 2 cores
    beets_env.beet("-v", "identify", "--json", "--similar", "0", clip)
    # Its correlations ran on the identifying thread: no BLAS threads of
    # their own spinning beside the other clips' searches.
    assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} <= {1}
    (answer,) = [json.loads(line) for line in beets_env.output.splitlines()]
    assert answer["match"]["title"] == "Piece 1"
    assert abs(answer["match"]["offset"] - 8.0) <= 0.5 and answer["match"]["confidence"] > 0.5
    (landmarks,) = [line for line in plugin_log if line.startswith(f"{clip}: best candidate")]
    assert float(landmarks.rsplit("confidence ", 1)[1]) < 0.5
    (look,) = [line for line in plugin_log if line.startswith(f"{clip}: second look")]
    assert f"item {answer['match']['id']} at 8." in look


def test_text_and_template_output(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    clip = clip_of(1, 12.0, 5.0, 10.0, tmp_path / "clip.flac")
    text = beets_env.beet("identify", "--similar", "2", clip)
    lines = text.splitlines()
    assert lines[0] == f"{clip}: Chord Collective - Piece 1 (Chord Collective Vol. 1)"
    assert lines[1].startswith("  at 0:12.") and "confidence" in lines[1]
    assert lines[2] == "  same vibe:" and len(lines) == 5
    templated = beets_env.beet("identify", "--similar", "0", "-f", "$title|$offset|$confidence", clip)
    title, offset, confidence = templated.strip().split("|")
    assert title == "Piece 1" and abs(float(offset) - 12.0) <= 0.5 and float(confidence) > 0.5


def test_a_version_is_named_as_a_version_not_as_the_recording(beets_env, tmp_path):
    # The library track is a duet of two generated parts; a clip of one
    # part alone is another version of it (a re-arrangement that drops a
    # part), a noisy clip of the duet is the recording.
    folder = tmp_path / "in"
    folder.mkdir()
    duet = 0.5 * (gen_audio.piece(7, 24.0) + gen_audio.piece(8, 24.0))
    gen_audio.write(duet, str(folder / "duet.flac"),
                    tags={"title": "Duet", "artist": "Two Parts", "album": "Versions"})
    beets_env.import_dir(folder)
    solo = clip_of(7, 9.0, 6.0, None, tmp_path / "solo.flac")
    noisy = tmp_path / "noisy.flac"
    gen_audio.write(gen_audio.add_noise(duet[int(9.0 * RATE): int(15.0 * RATE)], 5.0, seed=4),
                    str(noisy))
    version, recording = identify_json(beets_env, "--similar", "0", solo, str(noisy))
    assert version["match"]["title"] == "Duet" and version["match"]["version"] is True
    assert abs(version["match"]["offset"] - 9.0) <= 0.5
    assert recording["match"]["title"] == "Duet" and recording["match"]["version"] is False
    text = beets_env.beet("identify", "--similar", "0", solo, str(noisy)).splitlines()
    assert text[0] == f"{solo}: a version of Two Parts - Duet (Versions)"
    assert text[2] == f"{noisy}: Two Parts - Duet (Versions)"
    templated = beets_env.beet("identify", "--similar", "0", "-f", "$title|$version", solo)
    assert templated.strip() == "Duet|True"


def test_three_second_clean_clip_and_short_clip_error(beets_env, audio_dir, tmp_path, plugin_log):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    clip = clip_of(5, 15.0, 3.0, None, tmp_path / "three.wav")
    (answer,) = identify_json(beets_env, "--similar", "0", clip)
    assert answer["match"]["title"] == "Piece 5"
    short = clip_of(5, 15.0, 0.3, None, tmp_path / "short.wav")
    message = user_error(beets_env, "identify", short)
    assert "could not be read" in message
    lines = [line for line in plugin_log if short in line]
    assert len(lines) == 1 and "too short" in lines[0]


def test_identify_reports_each_bad_clip_and_answers_the_others(beets_env, audio_dir, tmp_path, plugin_log):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    bad = write_bad_files(tmp_path / "bad")
    clip = tmp_path / "clip.m4a"
    source = gen_audio.piece(1, 24.0)[22050 * 8: 22050 * 14]
    gen_audio.write(gen_audio.add_noise(source, 10.0), str(clip))
    clips = [str(bad["missing"][0]), str(clip), str(bad["text"][0]),
             str(bad["short"][0]), str(bad["silence"][0])]
    message = user_error(beets_env, "identify", "--similar", "0", "--json", *clips)
    assert "could not be read" in message
    import json

    answers = [json.loads(line) for line in beets_env.output.splitlines()]
    assert [a["clip"] for a in answers] == clips
    good = answers[1]
    assert good["match"]["title"] == "Piece 1"
    assert abs(good["match"]["offset"] - 8.0) < 0.5
    for answer in answers[:1] + answers[2:]:
        assert answer["match"] is None and answer["error"]
    for path, words in (bad["missing"], bad["text"], bad["short"], bad["silence"]):
        lines = [line for line in plugin_log if str(path) in line]
        assert len(lines) == 1 and words.split()[0] in lines[0], (path, plugin_log)


def test_a_clip_piped_to_identify_dash_is_read_from_standard_input(model_dir, audio_dir,
                                                                  tmp_path):
    beet = BeetProcess(tmp_path, model_dir)
    incoming = copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])
    assert beet.run("import", "-A", "-q", str(incoming)).returncode == 0
    clip = tmp_path / "clip.m4a"  # its index at the end, as a phone writes it
    gen_audio.write(gen_audio.add_noise(gen_audio.piece(1, 24.0)[RATE * 8: RATE * 14], 10.0),
                    str(clip))

    def piped(data: bytes, *args: str):
        return subprocess.run(beet.command("identify", "--similar", "0", *args), input=data,
                              env=beet.env(), capture_output=True, timeout=300)

    out = piped(clip.read_bytes(), "--json", "-", str(clip))
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and [a["clip"] for a in answers] == ["-", str(clip)]
    assert answers[0]["match"] == answers[1]["match"]
    assert answers[0]["match"]["title"] == "Piece 1"
    assert abs(answers[0]["match"]["offset"] - 8.0) < 0.5
    for data, args, words in ((b"", ["-"], "standard input is empty"),
                              (clip.read_bytes(), ["-", "-"], "give - once"),
                              (os.urandom(3000), ["-"], "-: not a readable audio file")):
        failed = piped(data, *args)
        assert failed.returncode == 1 and words in failed.stderr.decode(), failed.stderr


def test_a_long_recording_says_only_its_beginning_is_identified(beets_env, audio_dir, tmp_path,
                                                                plugin_log):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    long = tmp_path / "radio-hour.flac"  # piece 1 from its start, then noise: 40 s
    hiss = 0.05 * np.random.default_rng(3).standard_normal(16 * RATE)
    samples = np.concatenate([gen_audio.piece(1, 24.0), hiss.astype(np.float32)])
    gen_audio.write(samples, str(long))
    short = clip_of(1, 4.0, 6.0, None, tmp_path / "short.wav")
    (first, second) = identify_json(beets_env, "--similar", "0", str(long), short)
    assert first["match"]["title"] == second["match"]["title"] == "Piece 1"
    said = [line for line in plugin_log if "only its first 30 s are identified" in line]
    assert said == [f"{long}: only its first 30 s are identified"]


def test_searches_run_side_by_side_and_a_refresh_waits_for_them():
    # `beet listen` and `beet identify` with many clips search the index
    # from several threads; a refresh (after an import) waits for the
    # searches in flight and holds back new ones until it is done.
    import threading

    from beetsplug.soundslike.identify import SharedGate

    gate = SharedGate()
    both_inside = threading.Barrier(2, timeout=5)
    order = []

    def search(name):
        with gate.shared():
            both_inside.wait()  # fails unless the two are inside at once
            order.append(name)

    def refresh():
        with gate.exclusive():
            order.append("refresh")

    readers = [threading.Thread(target=search, args=(n,)) for n in ("a", "b")]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(10)
    assert sorted(order) == ["a", "b"]
    with gate.shared():
        writer = threading.Thread(target=refresh)
        writer.start()
        writer.join(0.3)
        assert writer.is_alive()  # waits for the search in flight
    writer.join(5)
    assert order[-1] == "refresh"
