"""``beet listen``: serve the web page that names what is playing, for a
phone (:mod:`..web`), until Ctrl-C."""

from __future__ import annotations

import os

from beets import ui
from beets.ui import Subcommand

from .common import guarded, identifier_for


def command(plugin) -> Subcommand:
    cmd = Subcommand(
        "listen", help="serve a web page that identifies what is playing, for a phone"
    )
    cmd.parser.usage += (
        "\n\nStart a web server on this machine; open its page on a phone,"
        "\npress Record, and it names the library track playing nearby and"
        "\nsuggests tracks in the same vibe. Bound beyond loopback, every"
        "\nrequest needs the access token carried by the printed URL."
    )
    add = cmd.parser.add_option
    add("--host", default=None, metavar="HOST",
        help="address to listen on (default: soundslike.listen_host, 127.0.0.1; "
             "0.0.0.0 for the home network)")
    add("--port", type="int", default=None, metavar="PORT",
        help="port (default: soundslike.listen_port, 8338)")
    add("--tls-cert", default=None, metavar="FILE",
        help="serve https with this certificate (phones allow the microphone only on https)")
    add("--tls-key", default=None, metavar="FILE", help="the certificate's private key")
    add("--similar", type="int", default=None, metavar="N",
        help="same-vibe suggestions per answer (default: soundslike.similar)")

    cmd.func = guarded(plugin, run)
    return cmd


def run(plugin, lib, opts, args) -> None:
    from ..web import access_token, create_app, listen_server, qr_code, url_for_host

    settings = plugin.settings(lib)
    listen = plugin.listen_settings()
    defaults = plugin.playlist_settings()
    host = opts.host or listen.host
    port = opts.port if opts.port is not None else listen.port
    similar = opts.similar if opts.similar is not None else defaults.similar
    cert = opts.tls_cert or listen.tls_cert
    key = opts.tls_key or listen.tls_key
    if bool(cert) != bool(key):
        raise ui.UserError("give both --tls-cert and --tls-key for https")
    for path in (cert, key):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise ui.UserError(f"no such file: {path}")
    identifier = identifier_for(plugin, lib)
    try:
        token = access_token(host, settings, listen.token)
        app = create_app(
            identifier, lib, token=token, similar=similar, seconds=listen.seconds,
            relative_to=defaults.relative_to, prefix=defaults.prefix,
        )
        tls = (os.path.expanduser(cert), os.path.expanduser(key)) if cert else None
        try:
            server = listen_server(app, host, port, tls=tls)
        except OSError as exc:
            raise ui.UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        url = url_for_host(host, server.server_port, bool(cert), token)
        ui.print_(f"beet listen: open {url}")
        if token:
            qr = qr_code(url)
            ui.print_(qr if qr is not None else
                      "(pip install segno to show this URL as a QR code)")
            ui.print_("Scan the code with the phone's camera (same network). "
                      "The token in the URL is the key: share it with care.")
            if not cert:
                ui.print_("Plain http: phones allow the microphone only on https, so the "
                          "page offers to upload a recording instead (--tls-cert/--tls-key "
                          "for live recording; see docs/listen.md).")
        ui.print_("Ctrl-C to stop.")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        identifier.close()
