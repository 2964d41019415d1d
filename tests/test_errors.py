"""One clear line, said once (issue 16): every way of getting the model
option wrong, a file that cannot be decoded, a playlist file that is not
there, and the answers of ``beet similar`` and ``beet identify`` that are
not failures at all. Real beet processes where the environment matters
(the Hugging Face hub is asked over the network), the in-process runner
elsewhere."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import FORMATS, BeetProcess, copy_pieces, user_error

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]
#: A beet process that fails at once still spends a few seconds starting
#: Python, beets and transformers; transformers' own retries took 25-30 s.
FAST_S = 15.0


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HubProcess(BeetProcess):
    """A beet process that may ask the Hugging Face hub: HF_HUB_OFFLINE is
    not set, the cache is a folder of its own, and ``endpoint`` (when
    given) replaces https://huggingface.co."""

    def __init__(self, root: Path, model: str, endpoint: str | None = None, **extra):
        super().__init__(root, model, **extra)
        self.hf_home = root / "hf-home"
        self.endpoint = endpoint

    def env(self) -> dict:
        env = super().env()
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
        env["HF_HOME"] = str(self.hf_home)
        env.pop("HF_HUB_CACHE", None)
        if self.endpoint:
            env["HF_ENDPOINT"] = self.endpoint
        else:
            env.pop("HF_ENDPOINT", None)
        return env


def run_timed(beet: BeetProcess, *args: str):
    started = time.monotonic()
    result = beet.run(*args, timeout=120)
    return result, time.monotonic() - started


def said(result) -> str:
    return result.stdout + result.stderr


# -- the model option ----------------------------------------------------------


def test_model_folder_that_does_not_exist_says_so(beets_env, audio_dir, tmp_path):
    missing = tmp_path / "no-such-folder" / "wav2vec2"
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:1]))
    beets_env.reconfigure(model=str(missing))
    message = user_error(beets_env, "embed", "-f")
    assert f"the folder {missing} does not exist" in message
    assert "Repo id" not in message and "\n" not in message.strip()


def test_model_file_and_folder_without_config(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:1]))
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"\0" * 16)
    beets_env.reconfigure(model=str(a_file))
    assert f"{a_file} is a file, not a model folder" in user_error(beets_env, "embed", "-f")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    beets_env.reconfigure(model=str(empty))
    assert f"the folder {empty} has no config.json" in user_error(beets_env, "embed", "-f")


def assert_said_once(result, words: str) -> None:
    text = said(result)
    assert result.returncode != 0, text
    assert text.count(words) == 1, text
    assert "Retrying" not in text and "Traceback" not in text, text
    assert "thrown while requesting" not in text, text


def test_hub_id_unreachable_is_one_fast_line(model_dir, audio_dir, tmp_path):
    """The hub refuses the connection: one line, in seconds, not 25 s of
    'Retrying in 8s'."""
    beet = HubProcess(tmp_path, "no-such-org/no-such-model",
                      endpoint=f"http://127.0.0.1:{closed_port()}")
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
    result, seconds = run_timed(beet, "import", "-A", "-q", str(src))
    assert seconds < FAST_S, said(result)
    assert_said_once(result, "the Hugging Face hub")
    assert "2 imported item(s) were left for 'beet embed'" in said(result)

    result, seconds = run_timed(beet, "embed")
    assert seconds < FAST_S, said(result)
    assert_said_once(result, "cannot be reached")
    assert "no-such-org/no-such-model" in said(result)


def test_hub_id_on_the_real_hub_is_one_fast_line(model_dir, audio_dir, tmp_path):
    """The default endpoint: unreachable on an offline machine (this one),
    'no model of that name' on a connected one; one line, fast, either way."""
    beet = HubProcess(tmp_path, "no-such-org/no-such-model")
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:1])
    beet.run("import", "-A", "-q", str(src), timeout=120)
    result, seconds = run_timed(beet, "embed")
    assert seconds < FAST_S, said(result)
    assert_said_once(result, "cannot load soundslike.model: 'no-such-org/no-such-model'")


def test_hub_id_with_hf_hub_offline_names_the_variable(model_dir, audio_dir, tmp_path):
    beet = HubProcess(tmp_path, "no-such-org/no-such-model")
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:1])
    beet.run("import", "-A", "-q", str(src), timeout=120)
    env = dict(beet.env(), HF_HUB_OFFLINE="1")
    import subprocess

    result = subprocess.run(beet.command("embed"), env=env, capture_output=True,
                            text=True, timeout=120)
    assert_said_once(result, "HF_HUB_OFFLINE is set")


def test_cached_hub_model_loads_without_the_network(model_dir, audio_dir, tmp_path):
    """A hub id whose files are in the local cache embeds with the hub out
    of reach, without asking it; the next process opens its export without
    loading it."""
    beet = HubProcess(tmp_path, "tiny-org/tiny-wav2vec2",
                      endpoint=f"http://127.0.0.1:{closed_port()}")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = beet.hf_home / "hub" / "models--tiny-org--tiny-wav2vec2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in os.listdir(model_dir):
        shutil.copy(os.path.join(model_dir, name), snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
    result = beet.run("import", "-A", "-q", str(src), timeout=300)
    assert result.returncode == 0, said(result)
    status = beet.run("embed", "--status")
    assert "embedded: 2" in status.stdout, said(status)
    assert "thrown while requesting" not in said(result)
    # The next process opens the cached export by the snapshot's content.
    again = beet.run("-v", "embed", "-f", timeout=300)
    assert again.returncode == 0 and "opened the cached export" in said(again), said(again)


def on_a_terminal(beet: BeetProcess, *args: str, timeout: float = 300) -> str:
    """Run a beet command with its output on a pseudo-terminal, as a user
    sees it; return everything it wrote there."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    # A terminal of 30 rows and 100 columns: progress bars size themselves to it.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(beet.command(*args), env=beet.env(), stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1.0)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_a_hub_model_is_downloaded_once_with_its_progress_shown(model_dir, audio_dir, tmp_path):
    """The default model is a hub id: the first run downloads it (1.2 GB),
    which must not look like a hang. A real HTTP server serves the tiny
    model as a hub repository; ``beet import`` on a terminal shows the
    download's progress, every item is analysed, and later runs neither
    download again nor load the model."""
    from fake_hub import FakeHub

    with FakeHub(model_dir, "tiny-org/tiny-wav2vec2") as hub:
        beet = HubProcess(tmp_path, "tiny-org/tiny-wav2vec2", endpoint=hub.url)
        src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
        shown = on_a_terminal(beet, "import", "-A", "-q", str(src))
        assert "model.safetensors" in shown and "100%" in shown, shown
        assert hub.sent["model.safetensors"] == 1 and hub.sent["config.json"] >= 1
        assert "embedded: 2" in beet.run("embed", "--status").stdout
        again = beet.run("-v", "embed", "-f")
        assert again.returncode == 0 and "opened the cached export" in said(again), said(again)
        assert "downloading" not in said(again)
        assert hub.sent["model.safetensors"] == 1


def test_a_download_broken_off_is_one_line_and_the_next_run_resumes(model_dir, audio_dir, tmp_path):
    """The network drops in the middle of the weights: one line that says
    so (not transformers' advice about local folders), nothing lost, and
    the next run completes the download and the analysis."""
    from fake_hub import FakeHub

    with FakeHub(model_dir, "tiny-org/tiny-wav2vec2") as hub:
        beet = HubProcess(tmp_path, "tiny-org/tiny-wav2vec2", endpoint=hub.url, auto=False)
        assert beet.run("import", "-A", "-q",
                        str(copy_pieces(audio_dir, tmp_path / "in", PIECES[:2]))).returncode == 0
        hub.cut.add("model.safetensors")
        broken = beet.run("embed")
        errors = [line for line in said(broken).splitlines() if line.startswith("error:")]
        assert broken.returncode != 0 and len(errors) == 1, said(broken)
        assert "download from the Hugging Face hub failed" in errors[0], errors[0]
        assert "run the command again" in errors[0] and "Traceback" not in said(broken)
        hub.cut.clear()
        done = beet.run("embed")
        assert done.returncode == 0, said(done)
        assert "embedded: 2" in beet.run("embed", "--status").stdout
        assert hub.sent["model.safetensors"] == 1


@pytest.mark.parametrize("value", ["~/no-such-model-folder", "./models/w2v", "a/b/c"])
def test_folder_forms_are_never_sent_to_the_hub(beets_env, audio_dir, tmp_path, value):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:1]))
    beets_env.reconfigure(model=value)
    message = user_error(beets_env, "embed", "-f")
    assert "does not exist" in message and "hub" not in message.split("(set")[0]


# -- files that cannot be decoded ------------------------------------------------


def documented_reasons() -> list[str]:
    """The reasons in the first table of docs/troubleshooting.md."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()
    table = text.split("## A file that cannot be analysed", 1)[1].split("\n## ", 1)[0]
    reasons = []
    for line in table.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            reasons += [part.strip("` ") for part in first.split("/")]
    return reasons


def broken_files(folder: Path, audio_dir: Path) -> list[Path]:
    """Files ffmpeg fails on in different ways."""
    import subprocess

    folder.mkdir()
    whole = (audio_dir / "piece0.mp3").read_bytes()
    made = []
    for size in (10, 200, 400, 1500):
        path = folder / f"truncated-{size}.mp3"
        path.write_bytes(whole[:size])
        made.append(path)
    for ext in (".mp3", ".ogg", ".wav", ".m4a", ".flac", ".opus"):
        path = folder / f"text{ext}"
        path.write_text("this is a text file, not audio\n" * 20)
        made.append(path)
    noise = folder / "random.mp3"
    noise.write_bytes(os.urandom(40000))
    made.append(noise)
    m4a = folder / "piece.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(audio_dir / "piece0.mp3"), "-t", "5",
                    str(m4a)], check=True)
    cut = folder / "truncated.m4a"
    cut.write_bytes(m4a.read_bytes()[:3000])
    made.append(cut)
    return made


def test_every_decode_failure_is_a_documented_reason(audio_dir, tmp_path):
    from beetsplug.soundslike.audio import AudioError, decode, decode_bytes

    reasons = documented_reasons()
    assert "not a readable audio file (invalid or unknown data)" in reasons
    for path in broken_files(tmp_path / "bad", audio_dir):
        for read in (lambda: decode(path), lambda: decode_bytes(path.read_bytes())):
            try:
                audio = read()
            except AudioError as exc:
                reason = str(exc)
                assert reason in reasons or reason == "empty upload", (path.name, reason)
            else:  # a few frames survived the cut: too short is said later
                assert audio.seconds < 1.0, path.name


def test_broken_files_in_embed_give_documented_reasons(beets_env, audio_dir, tmp_path,
                                                       plugin_log):
    from beets.library import Item

    reasons = documented_reasons() + [
        f"too short ({s / 10:.1f} s of audio)" for s in range(10)
    ]
    files = broken_files(tmp_path / "bad", audio_dir)
    for path in files:
        beets_env.lib.add(Item(path=os.fsencode(str(path)), title=path.name, artist="X"))
    user_error(beets_env, "embed")
    for path in files:
        lines = [line for line in plugin_log if line.startswith(f"{path}: ")]
        assert len(lines) == 1, (path, plugin_log)
        assert lines[0].split(": ", 1)[1] in reasons, lines[0]


# -- beet similar ------------------------------------------------------------------


@pytest.fixture
def library(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    return beets_env


@pytest.mark.parametrize("option", ["--continue", "--avoid"])
def test_a_missing_playlist_file_is_one_line(library, tmp_path, option):
    missing = tmp_path / "missing.m3u"
    args = [option, str(missing)] + (["title:Piece 1"] if option == "--avoid" else [])
    message = user_error(library, "similar", *args)
    assert str(missing) in message and "\n" not in message.strip()
    assert "no such file" in message or "cannot read" in message
    folder = tmp_path / "a-folder.m3u"
    folder.mkdir()
    message = user_error(library, "similar", option, str(folder),
                         *(["title:Piece 1"] if option == "--avoid" else []))
    assert str(folder) in message and "\n" not in message.strip()


@pytest.mark.parametrize("args, words", [
    (["title:Piece 1", "--to", "title:Nothing"], "no items match 'title:Nothing' (--to)"),
    (["title:Piece 1", "--to", 'title:"Piece 1"'], "--to must name another track"),
    (["title:Piece 1", "--where", "title:Nothing"], "no other embedded tracks found"),
])
def test_ordinary_answers_are_not_store_failures(library, args, words):
    message = user_error(library, "similar", *args)
    assert words in message
    assert "cannot use the store" not in message and "store" not in message


def test_format_with_to_prints_every_score(library):
    out = library.beet("similar", "title:Piece 1", "--to", 'title:"Piece 2"', "-n", "2",
                       "-f", "$title $soundslike_score")
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    assert "$soundslike_score" not in out
    assert lines[0].startswith("Piece 1 ") and lines[-1].startswith("Piece 2 ")
    assert float(lines[0].split()[-1]) == 1.0  # the seed itself
    for line in lines[1:]:
        assert 0.0 < float(line.split()[-1]) <= 1.0


@pytest.mark.parametrize("args, words", [
    (["-a", "title:Piece 1", "--to", 'title:"Piece 2"'], "-a"),
    (["title:Piece 1", "--to", 'artist:"Chord Collective"'], "matches 2 tracks"),
    (["artist:Chord Collective", "--to", 'title:"Piece 2"'], "seed query matches 2"),
    (["title:Piece 1", "--max-per-artist", "-1"], "--max-per-artist"),
    (["title:Piece 1", "--max-per-album", "-2"], "--max-per-album"),
])
def test_options_that_cannot_work_are_refused(library, args, words):
    assert len(library.lib.items("artist:Chord Collective")) == 2
    message = user_error(library, "similar", *args)
    assert words in message and "\n" not in message.strip()


# -- beet identify -----------------------------------------------------------------


def test_identify_with_an_empty_index_says_how_to_fill_it(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:2]))
    beets_env.beet("rm", "-f")  # every item gone: the index exists and is empty
    message = user_error(beets_env, "identify", str(audio_dir / PIECES[0]))
    assert "no fingerprints yet" in message and "beet embed" in message
    assert "not in your library" not in beets_env.output


def test_identify_before_anything_was_analysed(beets_env, audio_dir):
    beets_env.beet("embed")  # an empty library: the index folder is made, empty
    message = user_error(beets_env, "identify", str(audio_dir / PIECES[0]))
    assert "no fingerprints yet" in message
