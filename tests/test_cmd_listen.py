"""``beet listen`` itself, in a real beet process on the test library: the
URL, the token and the QR code it prints, https with a certificate, and
one line for half a certificate pair."""

from __future__ import annotations

import http.client
import os
import subprocess

from test_web import library  # noqa: F401 (fixture)


def free_port(host: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def beet_listen(library, tmp_path, *args: str):
    """A real ``beet listen`` process on the test library."""
    import sys

    import yaml

    config = {
        "directory": library.lib.directory.decode() if isinstance(library.lib.directory, bytes)
        else library.lib.directory,
        "library": os.fsdecode(library.lib.path),
        "plugins": ["soundslike"],
        "soundslike": dict(library.config["soundslike"].get()),
    }
    beetsdir = tmp_path / "beetsdir"
    beetsdir.mkdir(exist_ok=True)
    (beetsdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, BEETSDIR=str(beetsdir), HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "beets", "listen", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(connect, timeout: float = 30):
    import time

    deadline = time.time() + timeout
    while True:
        try:
            return connect()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def test_listen_command_prints_url_and_qr(library, tmp_path):  # noqa: F811
    """The command itself, in a real beet process: URL, token and QR code."""
    port = free_port("127.0.0.2")
    proc = beet_listen(library, tmp_path, "--host", "127.0.0.2", "--port", str(port))
    try:
        first = proc.stdout.readline()
        token = (library.settings.store_dir / "listen-token").read_text().strip()
        assert first.strip() == f"beet listen: open http://127.0.0.2:{port}/?token={token}"
        qr = [proc.stdout.readline() for _ in range(3)]
        assert any("█" in line or "▀" in line for line in qr)

        def get(path):
            conn = http.client.HTTPConnection("127.0.0.2", port, timeout=5)
            conn.request("GET", path)
            return conn.getresponse().status

        assert wait_for(lambda: get("/")) == 401
        conn = http.client.HTTPConnection("127.0.0.2", port, timeout=5)
        conn.request("GET", f"/?token={token}")
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_listen_command_serves_https(library, tmp_path):  # noqa: F811
    """--tls-cert/--tls-key: https with a self-signed certificate."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    port = free_port("127.0.0.1")
    proc = beet_listen(library, tmp_path, "--port", str(port),
                       "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert proc.stdout.readline().strip() == f"beet listen: open https://127.0.0.1:{port}/"
        context = ssl.create_default_context(cafile=str(cert))

        def get():
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status, response.read()

        status, body = wait_for(get)
        assert status == 200 and b"MediaRecorder" in body  # loopback: no token
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # Half a pair is refused with one line.
    proc = beet_listen(library, tmp_path, "--port", str(port), "--tls-cert", str(cert))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "give both --tls-cert and --tls-key" in out
