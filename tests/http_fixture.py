"""A local HTTP server whose routes the tests define, started and stopped by the tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Route = Callable[[BaseHTTPRequestHandler], None]


class LocalServer:
    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.requests.append((self.path, dict(self.headers)))
                route = outer.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_bytes(data: bytes, content_type: str = "application/octet-stream", status: int = 200, headers: "dict | None" = None, cut_at: "int | None" = None) -> Route:
    """A route that serves `data`, honouring Range; `cut_at` closes the connection early."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        start = 0
        rng = handler.headers.get("Range")
        body = data
        code = status
        if rng and rng.startswith("bytes=") and status == 200:
            start = int(rng[6:].split("-")[0])
            body = data[start:]
            code = 206
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        if code == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if cut_at is not None and start < cut_at:
            handler.wfile.write(body[: cut_at - start])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)

    return route


def trickle(data: bytes, interval: float = 0.2, max_s: float = 8.0, content_type: str = "image/jpeg", started: "list | None" = None) -> Route:
    """A route that announces all of `data` but sends one byte every `interval` seconds, for at most
    `max_s` seconds and `len(data)` bytes (then it closes): a server that never quite stops sending.
    `started` gets a time.monotonic() per request, so a test can wait until the trickle is on."""
    import time

    def route(handler: BaseHTTPRequestHandler) -> None:
        if started is not None:
            started.append(time.monotonic())
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        end = time.monotonic() + max_s
        try:
            for byte in data:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                if time.monotonic() >= end:
                    break
                time.sleep(interval)
        except OSError:
            pass  # the client hung up: what the tests want

    return route
