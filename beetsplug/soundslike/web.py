"""The web app of ``beet listen``: a small web server on the library's
machine that names what is playing, from a phone.

Its one page records a few seconds through the microphone (or takes a
recording the phone made itself), posts it to ``/api/identify`` and shows
the answer: the library track, where in it the clip sits, how sure the
match is, and tracks in the same vibe, playable in the page and as an M3U.

* The fingerprint index and the store are opened once, when the server
  starts (one :class:`~.identify.Identifier`); as many clips are
  identified at once as the machine has cores (decoding, in decoding processes, is
  outside that limit), the rest wait their turn.
* Bound to loopback (``127.0.0.1``, ``::1``, ``localhost``) the server
  needs no credentials; bound to anything else every request needs the
  access token (``?token=`` or ``Authorization: Bearer``), kept in
  ``<store>/listen-token`` (mode 0600) or set as ``soundslike.listen_token``.
* Library audio is served by item id only, never by a path from the request.
* An upload is kept and decoded in memory, never written to disk (an
  MP4/MOV whose index sits at the end, iPhone recordings, goes through an
  anonymous in-memory file on Linux, a private temporary file elsewhere).
* A client that stops sending is dropped after :data:`READ_TIMEOUT_S`; a
  TLS handshake happens in the connection's own thread; the token never
  reaches the access log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import mimetypes
import os
import secrets
import re
import socket
import threading
from pathlib import Path

from .audio import SAMPLE_RATE, AudioError, decode_bytes
from .identify import ClipError, check_clip
from .playlist import m3u, playlist_path

#: Largest upload accepted (bytes); more is answered 413.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Longest clip accepted (seconds of audio); more is answered 413.
MAX_AUDIO_SECONDS = 30.0
#: Seconds a client may leave the server waiting for the next bytes of its
#: request (or of its TLS handshake) before it is dropped.
READ_TIMEOUT_S = 20.0
#: Item ids are SQLite integers: anything larger names no item.
MAX_ITEM_ID = 2**63 - 1

TOKEN_FILE = "listen-token"
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


# --------------------------------------------------------------------------
# access
# --------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True only for the exact loopback bindings that need no token:
    ``127.0.0.1``, ``::1`` and ``localhost``. Any other address, even
    ``127.0.0.2``, is treated as reachable by others."""
    return host.strip("[]").lower() in LOOPBACK_NAMES


def access_token(host: str, settings, configured: str = "") -> str | None:
    """The token requests must carry when bound to ``host``: None on
    loopback; else ``configured`` (``soundslike.listen_token``) if set, else
    the one kept in the store folder (created once, mode 0600)."""
    if is_loopback(host):
        return None
    if configured:
        return configured
    return stored_token(Path(settings.store_dir))


def stored_token(store_dir: Path) -> str:
    """Read ``store_dir/listen-token``, creating it (0600) on first use."""
    path = Path(store_dir) / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(tmp, 0o600)
    try:
        # Another server started at the same moment keeps its token.
        os.link(tmp, path)
    except FileExistsError:
        token = path.read_text().strip() or token
    finally:
        os.unlink(tmp)
    return token


# --------------------------------------------------------------------------
# decoding uploads
# --------------------------------------------------------------------------


class UploadError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, sample_rate: int):
    """Decode an upload from memory to mono float32 at ``sample_rate``.

    Reads at most a little over :data:`MAX_AUDIO_SECONDS` so a small file
    that expands to hours of audio cannot fill memory; a longer clip is an
    :class:`UploadError` with status 413.
    """
    if not data:
        raise UploadError("the clip is empty")
    try:
        samples = decode_bytes(data, sample_rate, max_seconds=MAX_AUDIO_SECONDS + 0.5).samples
    except AudioError as exc:
        raise UploadError(f"cannot decode the clip: {exc}")
    seconds = len(samples) / float(sample_rate)
    if seconds > MAX_AUDIO_SECONDS:
        raise UploadError(
            f"clip too long: send at most {MAX_AUDIO_SECONDS:.0f} s of audio", 413
        )
    return samples


# --------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------


def page_html() -> str:
    return (Path(__file__).with_name("listen_page.html")).read_text(encoding="utf-8")


def create_app(
    identifier,
    lib,
    token: str | None = None,
    similar: int = 5,
    *,
    seconds: float = 8.0,
    relative_to: str | None = None,
    prefix: str = "",
):
    """The Flask app of ``beet listen`` around an open ``identifier``.

    ``token``: when set, every request must carry it (``?token=`` or
    ``Authorization: Bearer``; either one right is enough) or is answered
    401.
    """
    from flask import Flask, Response, jsonify, request, send_file
    from werkzeug.exceptions import HTTPException

    app = Flask(__name__)
    app.request_class = in_memory_request_class()
    # beets resolves item paths against a context variable that request
    # threads do not inherit: set it around every request.
    music_dir = getattr(lib, "music_dir_context", None)
    if music_dir is not None:
        inner = app.wsgi_app

        def wsgi_app(environ, start_response):
            with music_dir():
                return inner(environ, start_response)

        app.wsgi_app = wsgi_app
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    app.json.sort_keys = False
    # One identification per core at a time: more would only share the
    # cores and make every answer wait for all of them.
    turns = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
    expected = token.encode("utf-8") if token else None
    page = page_html().replace(
        "__LISTEN_CONFIG__",
        json.dumps({"seconds": seconds, "similar": similar, "token": bool(token)})
        .replace("<", "\\u003c"),
    )

    def error(message: str, status: int):
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.before_request
    def check_token():
        if expected is None:
            return None
        header = request.headers.get("Authorization", "")
        offered = [request.args.get("token", "")]
        if header[:7].lower() == "bearer ":
            offered.append(header[7:].strip())
        # Each is compared (in constant time): a stale header from a
        # bookmark does not shut out the right token in the URL.
        if any([hmac.compare_digest(given.encode("utf-8"), expected) for given in offered]):
            return None
        response = error("access token required: open the URL printed by 'beet listen'", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="beet listen"'
        return response

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 413:
            return error(
                f"upload too large: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB", 413
            )
        return error(exc.description or exc.name, exc.code or 500)

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.post("/api/identify")
    def identify():
        clip = request.files.get("clip")
        if clip is None:
            return error("no clip: send the recording as the multipart field 'clip'", 400)
        data = clip.read(MAX_UPLOAD_BYTES + 1)
        name = os.path.basename(clip.filename or "") or "clip"
        try:
            count = int(request.args.get("similar", similar))
        except ValueError:
            return error("similar must be a whole number", 400)
        count = max(0, min(count, 50))
        try:
            samples = decode_upload(data, SAMPLE_RATE)
        except UploadError as exc:
            return error(str(exc), exc.status)
        try:
            check_clip(samples)  # before waiting for a turn
        except ClipError as exc:
            return error(str(exc), 400)
        with turns:
            answer = identifier.identify_samples(samples, name, count)
        if answer.error:
            return error(answer.error, 400)
        return jsonify(answer.as_json())

    def item_or_404(item_id: int):
        if not 0 < item_id <= MAX_ITEM_ID:
            return None
        item = lib.get_item(item_id)
        if item is None:
            return None
        return item

    @app.get("/api/items/<int:item_id>/audio")
    def audio(item_id: int):
        item = item_or_404(item_id)
        if item is None:
            return error(f"no item {item_id}", 404)
        path = os.fsdecode(item.path)
        if not os.path.isfile(path):
            return error(f"the file of item {item_id} is missing", 404)
        mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if path.lower().endswith(".m4a"):
            mimetype = "audio/mp4"
        return send_file(path, mimetype=mimetype, conditional=True, etag=True)

    @app.get("/api/playlist.m3u")
    def playlist():
        raw = request.args.get("ids", "")
        try:
            ids = [int(part) for part in raw.split(",") if part.strip()]
        except ValueError:
            return error("ids must be item ids separated by commas", 400)
        if not ids:
            return error("no ids: /api/playlist.m3u?ids=1,2,3", 400)
        if not all(0 < item_id <= MAX_ITEM_ID for item_id in ids):
            return error("ids must be item ids separated by commas", 400)
        entries = []
        for item_id in ids[:200]:
            item = lib.get_item(item_id)
            if item is None:
                return error(f"no item {item_id}", 404)
            entries.append((playlist_path(item.path, relative_to, prefix),
                            item.length, item.artist, item.title))
        response = Response(m3u(entries), mimetype="audio/x-mpegurl")
        response.headers["Content-Disposition"] = 'attachment; filename="same-vibe.m3u"'
        return response

    return app


def in_memory_request_class():
    """Flask's request class, keeping uploaded files in memory: werkzeug
    would spool any upload over 500 KB to a temporary file on disk.
    ``MAX_CONTENT_LENGTH`` bounds what is kept."""
    import io

    from flask import Request

    class InMemoryRequest(Request):
        def _get_file_stream(self, total_content_length, content_type,
                             filename=None, content_length=None):
            return io.BytesIO()

    return InMemoryRequest


#: ``token=...`` in a request line, for the access log.
TOKEN_IN_URL = re.compile(r"([?&;]token=)[^&;\s\"']*", re.IGNORECASE)


def hide_token(text: str) -> str:
    """``text`` with any ``token=`` value in it replaced by ``...``."""
    return TOKEN_IN_URL.sub(r"\1...", text)


def listen_server(app, host: str, port: int, tls: tuple[str, str] | None = None,
                  read_timeout: float = READ_TIMEOUT_S):
    """The threaded werkzeug server of ``beet listen`` for ``app``.

    Every read from a client waits at most ``read_timeout`` seconds (a
    client that sends all but the last bytes of a request would otherwise
    hold its thread forever); with ``tls`` (certificate and key files) the
    handshake happens in the connection's thread under the same timeout,
    not in the accepting loop, where one silent client would stop the whole
    server; the token is left out of the access log. Raises OSError when
    the address cannot be bound."""
    import ssl

    from werkzeug.serving import WSGIRequestHandler, load_ssl_context, make_server

    class Handler(WSGIRequestHandler):
        timeout = read_timeout

        def handle(self) -> None:
            if isinstance(self.connection, ssl.SSLSocket):
                try:
                    self.connection.do_handshake()
                except OSError:  # a timeout, a reset, or not TLS at all
                    return
            super().handle()

        def log(self, type: str, message: str, *args) -> None:
            super().log(type, hide_token(message),
                        *[hide_token(a) if isinstance(a, str) else a for a in args])

    server = make_server(host, port, app, threaded=True, request_handler=Handler)
    if tls is not None:
        context = load_ssl_context(*tls)
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        server.ssl_context = context  # werkzeug's mark of an https server
    return server


def lan_address() -> str | None:
    """This machine's address on the network that leads outside (no packet
    is sent), or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def url_for_host(host: str, port: int, https: bool, token: str | None) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = lan_address() or socket.gethostname()
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    url = f"{'https' if https else 'http'}://{host}:{port}/"
    return f"{url}?token={token}" if token else url


def qr_code(url: str) -> str | None:
    """``url`` as a QR code drawn with text for a terminal, or None when
    segno is not installed."""
    try:
        import segno
    except ImportError:
        return None
    import io

    buffer = io.StringIO()
    segno.make(url, error="m").terminal(out=buffer, compact=True, border=2)
    return buffer.getvalue().rstrip("\n")
