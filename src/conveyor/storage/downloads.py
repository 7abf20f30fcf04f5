"""The download server for `LocalStore` links (dev mode and single-machine installs).

S3 serves its own presigned URLs; a folder cannot, so the API runs this small HTTP server
beside gRPC when the store is local. It answers GET and HEAD for
`/objects/<key>?expires=…&filename=…&type=…&signature=…`, streams the file, and refuses
(403) a link that is expired or whose signature does not match: the same promise as S3's.
It is the standard library's threading HTTP server, which is plenty for downloads on one
machine and adds no dependency.
"""

from __future__ import annotations

import http.server
import logging
import shutil
import threading
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from conveyor.storage import ObjectNotFound
from conveyor.storage.local import LocalStore

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class _Handler(http.server.BaseHTTPRequestHandler):
    store: LocalStore
    server_version = "conveyor-downloads"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        parts = urlsplit(self.path)
        if not parts.path.startswith("/objects/"):
            self._refuse(404, "not found")
            return
        key = unquote(parts.path.removeprefix("/objects/"))
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        filename, content_type = query.get("filename", ""), query.get("type", "")
        why = self.store.signer.check(
            key, query.get("expires", ""), filename, content_type, query.get("signature", "")
        )
        if why:
            self._refuse(403, why)
            return
        try:
            path = self.store.path(key)
            stream = path.open("rb")
        except (ObjectNotFound, OSError):
            self._refuse(404, "no such object")
            return
        with stream:
            self.send_response(200)
            self.send_header("Content-Type", content_type or "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            if filename:
                disposition = f"attachment; filename*=UTF-8''{quote(filename)}"
                self.send_header("Content-Disposition", disposition)
            self.end_headers()
            if body:
                shutil.copyfileobj(stream, self.wfile, CHUNK)

    def _refuse(self, code: int, why: str) -> None:
        data = (why + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("download %s", format % args)


class DownloadServer:
    """Serves a LocalStore's signed links on `addr` ("host:port"; port 0: any free one)."""

    def __init__(self, store: LocalStore, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        handler = type("Handler", (_Handler,), {"store": store})
        self.httpd = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="downloads", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("artifact downloads on port %d", self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
