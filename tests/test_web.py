"""The web app of ``beet listen`` over HTTP: a real werkzeug server in a
thread on a loopback port, in front of a real library of generated pieces.

A degraded phone clip is named; every bad input gets its status and a JSON
message; bound beyond 127.0.0.1 every request needs the token; library
audio is served by id with Range support and nothing else is reachable.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import threading
import uuid

import pytest
from conftest import FORMATS, copy_pieces, gen_audio

from beetsplug.soundslike import web

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]
RATE = gen_audio.RATE


class Server:
    """A threaded werkzeug server for an app, on ``host`` and a free port."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        from werkzeug.serving import make_server

        self.host = host
        self.server = make_server(host, 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_clip(self, data: bytes, name: str = "clip.m4a", field: str = "clip",
                  path: str = "/api/identify", headers: dict | None = None):
        body, content_type = multipart({field: (name, data)})
        return self.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, (name, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def clip_bytes(tmp_path, seed: int, start: float, seconds: float, ext: str = ".m4a",
               snr_db: float | None = 5.0) -> bytes:
    samples = gen_audio.piece(seed, 24.0)[int(start * RATE): int((start + seconds) * RATE)]
    if snr_db is not None:
        samples = gen_audio.add_noise(samples, snr_db, seed=seed)
    path = tmp_path / f"clip-{seed}-{start}-{seconds}{ext}"
    gen_audio.write(samples, str(path))
    return path.read_bytes()


@pytest.fixture
def library(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    return beets_env


@pytest.fixture
def identifier(library):
    from beetsplug.soundslike.identify import Identifier

    plugin = library.soundslike
    ident = Identifier(library.settings, library.lib, lambda: plugin.indexer(library.lib).embedder)
    try:
        yield ident
    finally:
        ident.close()


@pytest.fixture
def server(identifier, library):
    srv = Server(web.create_app(identifier, library.lib, similar=3))
    try:
        yield srv
    finally:
        srv.close()


def as_json(body: bytes) -> dict:
    return json.loads(body.decode("utf-8"))


def test_degraded_phone_clip_is_identified(server, library, tmp_path):
    # 6 s from 0:09.3 of piece 4, pink noise at 5 dB SNR, AAC re-encoded.
    status, headers, body = server.post_clip(clip_bytes(tmp_path, 4, 9.3, 6.0), "phone.m4a")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    answer = as_json(body)
    assert list(answer) == ["clip", "match", "similar"]  # the beet identify --json schema
    assert answer["clip"] == "phone.m4a"
    match = answer["match"]
    assert match["title"] == "Piece 4"
    assert match["id"] == library.lib.items('title:"Piece 4"').get().id
    assert abs(match["offset"] - 9.3) <= 0.5 and 0.5 < match["confidence"] <= 1.0
    assert set(match) >= {"id", "artist", "title", "album", "path", "offset", "confidence"}
    assert os.path.isfile(match["path"])
    assert len(answer["similar"]) == 3
    assert all(os.path.isfile(s["path"]) for s in answer["similar"])
    assert match["id"] not in {s["id"] for s in answer["similar"]}
    # The same answer as the command line gives for the same clip.
    (tmp_path / "same.m4a").write_bytes(clip_bytes(tmp_path, 4, 9.3, 6.0))
    library.beet("identify", "--json", "--similar", "3", str(tmp_path / "same.m4a"))
    cli = json.loads(library.output)
    assert cli["match"]["id"] == match["id"]
    assert [s["id"] for s in cli["similar"]] == [s["id"] for s in answer["similar"]]


def test_webm_opus_upload_and_stranger(server, tmp_path):
    # What Chrome's MediaRecorder sends: webm/opus.
    wav = tmp_path / "rec.wav"
    gen_audio.write(gen_audio.piece(2, 24.0)[5 * RATE: 11 * RATE], str(wav))
    webm = tmp_path / "rec.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(wav), "-c:a", "libopus",
                    "-b:a", "32k", str(webm)], check=True)
    status, _, body = server.post_clip(webm.read_bytes(), "recording.webm")
    assert status == 200 and as_json(body)["match"]["title"] == "Piece 2"
    status, _, body = server.post_clip(clip_bytes(tmp_path, 77, 3.0, 6.0, ".ogg", None))
    assert status == 200
    answer = as_json(body)
    assert answer["match"] is None and "error" not in answer


def test_bad_inputs_get_status_and_json_message(server, tmp_path):
    def check(result, status, words):
        code, headers, body = result
        assert code == status, body
        assert headers["Content-Type"] == "application/json"
        message = as_json(body)["error"]
        assert words in message.lower(), message
        return message

    # No clip at all, or under another field name.
    check(server.request("POST", "/api/identify"), 400, "no clip")
    check(server.post_clip(b"RIFF", field="file"), 400, "no clip")
    # Not audio; empty; too short; silent.
    check(server.post_clip(b"this is not audio" * 100, "x.mp3"), 400, "cannot decode")
    check(server.post_clip(b"", "empty.wav"), 400, "empty")
    check(server.post_clip(clip_bytes(tmp_path, 1, 2.0, 0.4, ".wav"), "short.wav"), 400, "too short")
    silent = tmp_path / "silent.wav"
    gen_audio.write(gen_audio.piece(1, 3.0) * 0.0, str(silent))
    check(server.post_clip(silent.read_bytes(), "silent.wav"), 400, "silent")
    # Over 30 s of audio (small file, long clip) and over 10 MB.
    long_clip = tmp_path / "long.ogg"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=f=440:d=40",
                    "-c:a", "libvorbis", "-q:a", "0", str(long_clip)], check=True)
    assert long_clip.stat().st_size < 1_000_000
    check(server.post_clip(long_clip.read_bytes(), "long.ogg"), 413, "too long")
    check(server.post_clip(os.urandom(11 * 1024 * 1024), "big.wav"), 413, "too large")
    # Wrong method, unknown route, unknown item, bad playlist ids.
    check(server.request("GET", "/api/identify"), 405, "method")
    check(server.request("GET", "/api/nothing"), 404, "not found")
    check(server.request("GET", "/api/items/999999/audio"), 404, "no item 999999")
    check(server.request("GET", "/api/playlist.m3u?ids=1,x"), 400, "ids")
    check(server.request("GET", "/api/playlist.m3u?ids=999999"), 404, "no item")
    # The server keeps answering after all that.
    assert server.request("GET", "/")[0] == 200


def test_audio_by_id_with_range_and_m3u(server, library):
    item = library.lib.items('title:"Piece 3"').get()
    data = open(os.fsdecode(item.path), "rb").read()
    status, headers, body = server.request("GET", f"/api/items/{item.id}/audio")
    assert status == 200 and body == data
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"].startswith("audio/")
    status, headers, body = server.request(
        "GET", f"/api/items/{item.id}/audio", headers={"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    status, _, body = server.request(
        "GET", f"/api/items/{item.id}/audio", headers={"Range": "bytes=-500"})
    assert status == 206 and body == data[-500:]
    status, _, _ = server.request(
        "GET", f"/api/items/{item.id}/audio", headers={"Range": f"bytes={len(data) + 10}-"})
    assert status == 416

    others = [i for i in library.lib.items() if i.id != item.id][:2]
    ids = ",".join(str(i.id) for i in [item, *others])
    status, headers, body = server.request("GET", f"/api/playlist.m3u?ids={ids}")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    lines = body.decode().splitlines()
    assert lines[0] == "#EXTM3U"
    assert [line for line in lines if not line.startswith("#")] == [
        os.fsdecode(i.path) for i in [item, *others]]


def test_paths_from_the_request_reach_nothing(server, library, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    item = library.lib.items().get()
    for path in [
        "/api/items/../../../../etc/passwd",
        f"/api/items/{item.id}/../../../../etc/passwd",
        f"/api/items/..%2f..%2f..%2f..%2f{secret}/audio",
        f"/api/items/{secret}/audio",
        "/api/items/%2e%2e/%2e%2e/etc/passwd",
        f"/api/items/{item.id}/audio/../../../../../etc/passwd",
        "/api/items/-1/audio",
        "/api/items/1.0/audio",
        "/static/../../etc/passwd",
        "/listen_page.html",
    ]:
        status, headers, body = server.request("GET", path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b"private" not in body
        assert headers["Content-Type"] == "application/json"


def test_page_is_served_self_contained(server):
    status, headers, body = server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "__LISTEN_CONFIG__" not in page
    assert 'const CONFIG = {"seconds": 8.0, "similar": 3, "token": false}' in page
    assert "MediaRecorder" in page and 'type="file" accept="audio/*" capture' in page
    assert "<script src" not in page and "stylesheet" not in page  # nothing to fetch


def test_token_required_beyond_loopback(identifier, library, tmp_path):
    settings = library.settings
    assert web.access_token("127.0.0.1", settings) is None
    assert web.access_token("::1", settings) is None
    assert web.access_token("localhost", settings) is None
    token = web.access_token("127.0.0.2", settings)
    token_file = settings.store_dir / "listen-token"
    assert token and token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert web.access_token("0.0.0.0", settings) == token  # kept, not regenerated

    srv = Server(web.create_app(identifier, library.lib, token=token, similar=2),
                 host="127.0.0.2")
    try:
        item = library.lib.items().get()
        clip = clip_bytes(tmp_path, 0, 4.0, 5.0)
        for method, path in [("GET", "/"), ("GET", f"/api/items/{item.id}/audio"),
                             ("GET", f"/api/playlist.m3u?ids={item.id}"),
                             ("GET", "/api/items/999/audio"), ("GET", "/nothing")]:
            status, headers, body = srv.request(method, path)
            assert status == 401, path
            assert as_json(body) == {"error": as_json(body)["error"]} and b"Piece" not in body
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert srv.request(method, path + ("&" if "?" in path else "?") + "token=wrong")[0] == 401
        assert srv.post_clip(clip)[0] == 401
        assert srv.post_clip(clip, headers={"Authorization": "Bearer nope"})[0] == 401
        assert srv.post_clip(clip, headers={"Authorization": token})[0] == 401
        # With the token: in the URL, or as a Bearer header.
        status, _, body = srv.request("GET", f"/?token={token}")
        assert status == 200 and b'"token": true' in body
        status, _, body = srv.post_clip(clip, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and as_json(body)["match"]["title"] == "Piece 0"
        status, _, body = srv.post_clip(clip, path=f"/api/identify?token={token}")
        assert status == 200
        assert srv.request("GET", f"/api/items/{item.id}/audio?token={token}",
                           headers={"Range": "bytes=0-9"})[0] == 206
    finally:
        srv.close()

    # A configured token wins over the stored one.
    library.soundslike.config["listen_token"] = "from-config"
    configured = library.soundslike.listen_settings().token
    assert web.access_token("192.168.1.5", settings, configured) == "from-config"


def test_track_imported_while_serving_is_found(beets_env, audio_dir, tmp_path):
    from beetsplug.soundslike.identify import Identifier

    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:4]))
    ident = Identifier(beets_env.settings, beets_env.lib, None)
    srv = Server(web.create_app(ident, beets_env.lib, similar=0))
    try:
        clip = clip_bytes(tmp_path, 5, 8.0, 5.0)
        status, _, body = srv.post_clip(clip)
        assert status == 200 and as_json(body)["match"] is None
        beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "more", PIECES[5:]))
        status, _, body = srv.post_clip(clip)
        assert status == 200 and as_json(body)["match"]["title"] == "Piece 5"
    finally:
        srv.close()
        ident.close()


def test_twenty_concurrent_uploads_all_succeed(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    clips = [(seed, clip_bytes(tmp_path, seed, 3.0 + seed, 5.0)) for seed in range(5)]

    def send(n):
        seed, data = clips[n % len(clips)]
        status, _, body = server.post_clip(data, f"c{n}.m4a", headers={"Connection": "close"})
        return seed, status, as_json(body)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(send, range(20)))
    assert [status for _, status, _ in results] == [200] * 20
    for seed, _, answer in results:
        assert answer["match"]["title"] == f"Piece {seed}"
