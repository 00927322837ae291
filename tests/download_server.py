"""A loopback HTTP server that behaves like Civitai's download endpoint and a signed-storage host.

Routes (all configurable per test through :class:`FileServer` attributes):

* ``/files/<name>`` – serves ``files[name]`` with ``Content-Length``, honouring ``Range`` unless
  ``no_range`` is set; ``cut_first[name] = n`` makes the first response stop after ``n`` bytes
  (the connection is closed mid-body, as a flaky CDN does).
* ``/redirect/<name>`` – ``307`` to ``<redirect_base>/files/<name>?sig=…`` (another server).
* ``/status/<code>`` – an error answer with a Civitai-style JSON body.

Every request's path and headers are logged in ``requests`` for assertions.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_BODIES = {
    401: {
        "error": "Unauthorized",
        "message": "The creator of this asset requires you to be logged in to download it",
    },
    403: {"error": "Early Access", "deadline": "2030-01-01T00:00:00.000Z"},
    404: {"error": "File not found"},
    410: {"error": "Model archived, not available for download"},
    429: {"error": "We've noticed an unusual amount of downloading from your account"},
    500: {"error": "Internal error"},
}


class FileServer:
    """A ThreadingHTTPServer on 127.0.0.1 with a port chosen by the OS."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_disposition: dict[str, str] = {}
        self.cut_first: dict[str, int] = {}
        self.no_range = False
        self.redirect_base = ""
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers.items())})
                path = self.path.split("?", 1)[0]
                if path.startswith("/redirect/"):
                    name = path[len("/redirect/") :]
                    self.send_response(307)
                    self.send_header("Location", f"{server.redirect_base}/files/{name}?sig=abc&expires=1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.startswith("/status/"):
                    code = int(path[len("/status/") :])
                    body = json.dumps(_BODIES.get(code, {"error": "error"})).encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path.startswith("/files/"):
                    self._serve_file(path[len("/files/") :])
                    return
                self.send_error(404)

            def _serve_file(self, name: str) -> None:
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                status = 200
                if rng and not server.no_range and rng.startswith("bytes="):
                    start = int(rng[len("bytes=") :].split("-", 1)[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if name in server.content_disposition:
                    self.send_header("Content-Disposition", server.content_disposition[name])
                self.end_headers()
                with server._lock:
                    cut = server.cut_first.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def netloc(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.netloc}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
