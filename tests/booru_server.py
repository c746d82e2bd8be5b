"""A local HTTP server that speaks Gelbooru's, Safebooru's and Danbooru's APIs, for tests and benchmarks.

    with BooruServer(n_posts=300, latency=0.0, seed=0) as server:
        client = GelbooruClient(server.gelbooru_url, api_key=GELBOORU_API_KEY, user_id=GELBOORU_USER_ID, page_delay=0)
        ...

Constructor: `BooruServer(n_posts=300, *, seed=0, latency=0.0, image_size=(64, 48), gelbooru_deep_limit=20000,
danbooru_max_page=1000, require_gelbooru_auth=True)`. `latency` (seconds) is added to every request,
API and files alike (the download benchmark uses 0.05).

Base URLs (one server serves all three, each under its own prefix):
`server.gelbooru_url` = `{server.url}/gelbooru`, `server.safebooru_url` = `{server.url}/safebooru`,
`server.danbooru_url` = `{server.url}/danbooru`.

Posts: `server.posts` is a list of `FakePost` in booru order (newest id first). Their files:
- original: `server.file_url(post)` = `{server.url}/images/{post.directory}/{post.md5}.{post.ext}`
  (Safebooru's legacy `{base}/images/{directory}/{image}` form also works under `/safebooru`)
- sample (posts with `post.has_sample`): `server.sample_url(post)` = `{server.url}/samples/{dir}/sample_{md5}.jpg`
- preview: `server.preview_url(post)` = `{server.url}/thumbnails/{dir}/thumbnail_{md5}.jpg`
Any path whose last part is `{md5}.{ext}`, `sample_{md5}.jpg` or `thumbnail_{md5}.jpg` is served, so the URLs
that the clients build work too. Images are small valid PNG/JPEG (GIF for .gif; junk bytes for video/zip),
deterministic per post: `server.image_bytes(post, kind="original"|"sample"|"preview")` gives the same bytes.
`server.file_requests` counts requests per file path (to check that only missing files are fetched).

Per-post file faults (sets of post ids): `server.html_ids` (an HTML page with status 200 instead of the
image), `server.missing_ids` (404), `server.truncated_ids` (Content-Length says more than is sent),
`server.flaky_ids` (HTTP 500 the first time, then the image), `server.trickle_ids` (announces the whole image but
sends one byte every `server.trickle_interval` seconds, for at most `server.trickle_max_s` seconds, then closes).

API faults, switchable per test (attributes): `require_gelbooru_auth`, `single_object` (a Gelbooru page with one
post comes as an object), `safebooru_file_url` (False: legacy Safebooru answers without file_url/sample_url),
`danbooru_tag_limit` (2; anonymous searches with more tags get 422), and one-shot faults queued for the next
API requests: `server.fail_next(status, retry_after=None, times=1)`, `server.truncate_next(times=1)`,
`server.redirect_next(location, times=1)`, `server.trickle_next(times=1)` (the answer's JSON one byte at a time,
paced and bounded like `trickle_ids`).

Tags understood: plain tags (all required), `-tag`, `id:<N`, `id:>N`, `rating:x`; `sort:`/`order:` and other
metatags are accepted and ignored. Every post has `fake_tag`; `one_of_a_kind` is on exactly one post; `nothing_here`
matches none. Gelbooru's tags are HTML-escaped the way the real site sends them (`jeanne_d&#039;arc`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

GELBOORU_API_KEY = "gb-key-5f2c9a71e0"
GELBOORU_USER_ID = "4242031"
DANBOORU_LOGIN = "tester_login"
DANBOORU_API_KEY = "db-key-8a1e77c3f9"

VIDEO_EXTS = ("webm", "mp4", "gif", "zip")
GELBOORU_RATINGS = {"g": "general", "s": "sensitive", "q": "questionable", "e": "explicit"}


@dataclass
class FakePost:
    id: int
    md5: str
    ext: str
    width: int
    height: int
    tags: list[str]
    rating: str  # g/s/q/e
    score: int
    parent_id: int  # 0 = none
    has_sample: bool
    no_file_url: bool  # the API withholds file_url (Danbooru "hidden", Gelbooru empty)
    source: str = ""
    directory: str = ""

    @property
    def image(self) -> str:
        return f"{self.md5}.{self.ext}"


def make_posts(n: int, seed: int = 0) -> list[FakePost]:
    """`n` varied posts, newest (highest id) first; the mix is by index, so tests can count on it."""
    rng = random.Random(seed)
    posts = []
    for i in range(n):
        post_id = 100000 - i * 3 - rng.randint(0, 2)  # descending, with gaps like a real booru
        md5 = hashlib.md5(f"{seed}-{post_id}".encode()).hexdigest()
        ext = "png" if i % 3 == 0 else "jpg"
        if i % 10 == 3:
            ext = VIDEO_EXTS[(i // 10) % len(VIDEO_EXTS)]
        elif i % 11 == 4:
            ext = "webp"
        huge = i % 7 == 5
        width, height = (6000, 4000) if huge else (rng.randint(600, 2000), rng.randint(600, 2000))
        tags = ["fake_tag", "1girl" if i % 5 else "1boy", "solo" if i % 2 == 0 else "multiple_girls"]
        if i % 3 == 0:
            tags.append("red_hair")
        if i % 31 == 0:
            tags.append("jeanne_d'arc")
        if i == min(7, n - 1):
            tags.append("one_of_a_kind")
        posts.append(FakePost(
            id=post_id, md5=md5, ext=ext, width=width, height=height, tags=sorted(tags),
            rating="gsqe"[i % 4], score=i % 50, parent_id=(post_id + 1 if i % 9 == 2 else 0),
            has_sample=huge and ext in ("png", "jpg"), no_file_url=(i % 23 == 13),
            source=f"https://example.com/art/{post_id}", directory=md5[:2] + "/" + md5[2:4],
        ))
    return posts


@dataclass
class _Fault:
    kind: str  # "status", "truncate", "redirect", "trickle"
    status: int = 0
    retry_after: "str | None" = None
    location: str = ""


@dataclass
class _State:
    faults: list[_Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BooruServer:
    def __init__(self, n_posts: int = 300, *, seed: int = 0, latency: float = 0.0, image_size: tuple[int, int] = (64, 48),
                 gelbooru_deep_limit: int = 20000, danbooru_max_page: int = 1000, require_gelbooru_auth: bool = True):
        self.posts = make_posts(n_posts, seed)
        self.by_md5 = {post.md5: post for post in self.posts}
        self.latency = latency
        self.image_size = image_size
        self.gelbooru_deep_limit = gelbooru_deep_limit
        self.danbooru_max_page = danbooru_max_page
        self.require_gelbooru_auth = require_gelbooru_auth
        self.single_object = False
        self.safebooru_file_url = False
        self.danbooru_tag_limit = 2
        self.html_ids: set[int] = set()
        self.missing_ids: set[int] = set()
        self.truncated_ids: set[int] = set()
        self.flaky_ids: set[int] = set()
        self.trickle_ids: set[int] = set()
        self.trickle_interval = 0.2  # seconds between two bytes of a trickled answer
        self.trickle_max_s = 10.0  # a trickled answer closes after this long, whole or not
        self.requests: list[tuple[str, dict]] = []  # (path with query, headers) of every request
        self.file_requests: dict[str, int] = {}
        self._flaky_done: set[int] = set()
        self._state = _State()
        self._image_cache: dict[tuple[str, str], bytes] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so parallel downloads reuse connections

            def do_GET(self):  # http.server's naming
                try:
                    outer._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout or a cancelled download)
                except Exception as exc:  # noqa: BLE001 - a bug in the fake must not leave the client waiting
                    _send(self, 500, f"fake booru error: {exc!r}".encode(), "text/plain")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.gelbooru_url = self.url + "/gelbooru"
        self.safebooru_url = self.url + "/safebooru"
        self.danbooru_url = self.url + "/danbooru"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> "BooruServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "BooruServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- faults -------------------------------------------------------------------------------
    def fail_next(self, status: int, retry_after: "str | int | None" = None, times: int = 1) -> None:
        with self._state.lock:
            self._state.faults += [_Fault("status", status, None if retry_after is None else str(retry_after))] * times

    def truncate_next(self, times: int = 1) -> None:
        with self._state.lock:
            self._state.faults += [_Fault("truncate")] * times

    def redirect_next(self, location: str, times: int = 1) -> None:
        with self._state.lock:
            self._state.faults += [_Fault("redirect", location=location)] * times

    def trickle_next(self, times: int = 1) -> None:
        with self._state.lock:
            self._state.faults += [_Fault("trickle")] * times

    def _take_fault(self) -> "_Fault | None":
        with self._state.lock:
            return self._state.faults.pop(0) if self._state.faults else None

    # --- URLs and bytes -----------------------------------------------------------------------
    def file_url(self, post: FakePost) -> str:
        return f"{self.url}/images/{post.directory}/{post.image}"

    def sample_url(self, post: FakePost) -> str:
        return f"{self.url}/samples/{post.directory}/sample_{post.md5}.jpg"

    def preview_url(self, post: FakePost) -> str:
        return f"{self.url}/thumbnails/{post.directory}/thumbnail_{post.md5}.jpg"

    def image_bytes(self, post: FakePost, kind: str = "original") -> bytes:
        key = (post.md5, kind)
        cached = self._image_cache.get(key)
        if cached is None:
            cached = self._image_cache[key] = _render(post, kind, self.image_size)
        return cached

    # --- matching -------------------------------------------------------------------------------
    def search(self, tags: str) -> list[FakePost]:
        include, exclude, rating = set(), set(), None
        below, above = None, None
        for token in tags.split():
            low = token.lower()
            if low.startswith("id:<"):
                below = int(low[4:])
            elif low.startswith("id:>"):
                above = int(low[4:])
            elif low.startswith("rating:"):
                rating = low[7:8]
            elif ":" in low and not low.startswith("-"):
                continue  # sort:, order:, score:... accepted, ignored
            elif low.startswith("-"):
                exclude.add(low[1:])
            else:
                include.add(low)
        found = []
        for post in self.posts:
            names = set(post.tags)
            if include - names or exclude & names:
                continue
            if rating and post.rating != rating:
                continue
            if (below is not None and post.id >= below) or (above is not None and post.id <= above):
                continue
            found.append(post)
        return found

    # --- request handling -------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append((handler.path, dict(handler.headers)))
        if self.latency:
            time.sleep(self.latency)
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        api = {"/gelbooru/index.php": self._gelbooru, "/safebooru/index.php": self._safebooru,
               "/danbooru/posts.json": self._danbooru_posts, "/danbooru/counts/posts.json": self._danbooru_count}.get(path)
        if api is not None:
            fault = self._take_fault()
            if fault is not None:
                self._send_fault(handler, fault, api, query)
                return
            status, body, ctype = api(handler, query)
            _send(handler, status, body, ctype)
            return
        self._file(handler, path)

    def _send_fault(self, handler, fault: _Fault, api, query) -> None:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            _send(handler, fault.status, b'{"success": false, "message": "fault"}', "application/json", headers)
        elif fault.kind == "redirect":
            _send(handler, 302, b"", "text/plain", {"Location": fault.location})
        elif fault.kind == "trickle":
            _, body, ctype = api(handler, query)
            self._trickle(handler, body, ctype)
        else:  # a complete HTTP answer whose JSON text is cut in the middle
            _, body, ctype = api(handler, query)
            _send(handler, 200, body[: max(1, len(body) // 2)], ctype)

    def _gelbooru(self, handler, query) -> tuple[int, bytes, str]:
        if self.require_gelbooru_auth and (query.get("api_key") != GELBOORU_API_KEY or query.get("user_id") != GELBOORU_USER_ID):
            return 401, b'"Authentication required: api-key & user-id"', "application/json"
        return self._dapi(query, legacy=False)

    def _safebooru(self, handler, query) -> tuple[int, bytes, str]:
        return self._dapi(query, legacy=True)

    def _dapi(self, query: dict, legacy: bool) -> tuple[int, bytes, str]:
        if query.get("page") != "dapi" or query.get("s") != "post" or query.get("q") != "index":
            return 404, b"not found", "text/html"
        limit = min(int(query.get("limit", 100) or 0), 1000 if legacy else 100)
        pid = int(query.get("pid", 0) or 0)
        found = self.search(query.get("tags", ""))
        offset = pid * limit
        page = [] if offset >= self.gelbooru_deep_limit else found[offset: offset + limit]
        if query.get("json") != "1":  # XML (used for Safebooru's count)
            xml = f'<?xml version="1.0" encoding="UTF-8"?><posts count="{len(found)}" offset="{offset}"></posts>'
            return 200, xml.encode(), "text/xml"
        items = [self._dapi_post(post, legacy) for post in page]
        if legacy:  # Safebooru: a plain array (an empty body when nothing matched, like the real one)
            return 200, (json.dumps(items).encode() if items else b""), "application/json"
        body: dict = {"@attributes": {"limit": limit, "offset": offset, "count": len(found)}}
        if items:
            body["post"] = items[0] if (self.single_object and len(items) == 1) else items
        return 200, json.dumps(body).encode(), "application/json"

    def _dapi_post(self, post: FakePost, legacy: bool) -> dict:
        item = {
            "id": post.id, "width": post.width, "height": post.height, "rating": GELBOORU_RATINGS[post.rating],
            "score": post.score, "parent_id": post.parent_id, "source": post.source, "directory": post.directory,
            "image": post.image, "sample": int(post.has_sample),
            "tags": " ".join(html.escape(tag, quote=True).replace("&#x27;", "&#039;") for tag in post.tags),
        }
        if legacy:
            item["hash"] = post.md5
            if not self.safebooru_file_url:
                return item  # the old answer: build URLs from directory + image
        else:
            item["md5"] = post.md5
        item["file_url"] = "" if post.no_file_url else self.file_url(post)
        item["sample_url"] = self.sample_url(post) if post.has_sample else ""
        item["preview_url"] = self.preview_url(post)
        return item

    def _danbooru_authenticated(self, handler, query) -> bool:
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            login, _, key = base64.b64decode(header[6:]).decode().partition(":")
            return login == DANBOORU_LOGIN and key == DANBOORU_API_KEY
        return query.get("login") == DANBOORU_LOGIN and query.get("api_key") == DANBOORU_API_KEY

    def _danbooru_check(self, handler, query) -> "tuple[int, bytes, str] | None":
        has_auth = bool(handler.headers.get("Authorization") or query.get("api_key"))
        authed = self._danbooru_authenticated(handler, query)
        if has_auth and not authed:
            return 401, json.dumps({"success": False, "error": "SessionLoader::AuthenticationFailure", "message": "Invalid API key"}).encode(), "application/json"
        if not authed and len(query.get("tags", "").split()) > self.danbooru_tag_limit:
            message = "You cannot search for more than 2 tags at a time. Upgrade your account to search for more tags at once."
            return 422, json.dumps({"success": False, "error": "PostQuery::TagLimitError", "message": message}).encode(), "application/json"
        return None

    def _danbooru_count(self, handler, query) -> tuple[int, bytes, str]:
        refused = self._danbooru_check(handler, query)
        if refused:
            return refused
        return 200, json.dumps({"counts": {"posts": len(self.search(query.get("tags", "")))}}).encode(), "application/json"

    def _danbooru_posts(self, handler, query) -> tuple[int, bytes, str]:
        refused = self._danbooru_check(handler, query)
        if refused:
            return refused
        limit = min(int(query.get("limit", 20) or 20), 200)
        found = self.search(query.get("tags", ""))
        page = query.get("page", "1") or "1"
        if page.startswith("b"):
            below = int(page[1:])
            chosen = [post for post in found if post.id < below][:limit]
        else:
            number = int(page)
            if number > self.danbooru_max_page:
                message = f"You cannot go beyond page {self.danbooru_max_page}. Try narrowing your search terms, or upgrade your account to go beyond page {self.danbooru_max_page}."
                return 410, json.dumps({"success": False, "error": "PaginationExtension::PaginationError", "message": message}).encode(), "application/json"
            chosen = found[(number - 1) * limit: number * limit]
        return 200, json.dumps([self._danbooru_post(post) for post in chosen]).encode(), "application/json"

    def _danbooru_post(self, post: FakePost) -> dict:
        item = {
            "id": post.id, "image_width": post.width, "image_height": post.height, "file_ext": post.ext,
            "tag_string": " ".join(post.tags), "tag_string_general": " ".join(post.tags), "rating": post.rating,
            "score": post.score, "parent_id": post.parent_id or None, "source": post.source,
        }
        if not post.no_file_url:  # hidden posts come without md5 and URLs
            item["md5"] = post.md5
            item["file_url"] = self.file_url(post)
            item["large_file_url"] = self.sample_url(post) if post.has_sample else self.file_url(post)
            item["preview_file_url"] = self.preview_url(post)
        return item

    def _file(self, handler, path: str) -> None:
        name = path.rsplit("/", 1)[-1]
        kind = "original"
        if name.startswith("sample_"):
            kind, name = "sample", name[len("sample_"):]
        elif name.startswith("thumbnail_"):
            kind, name = "preview", name[len("thumbnail_"):]
        post = self.by_md5.get(name.split(".", 1)[0])
        if post is None or (kind == "original" and name != post.image):
            _send(handler, 404, b"not found", "text/plain")
            return
        with self._state.lock:
            self.file_requests[path] = self.file_requests.get(path, 0) + 1
            flaky_now = post.id in self.flaky_ids and post.id not in self._flaky_done
            self._flaky_done.add(post.id) if flaky_now else None
        if post.id in self.missing_ids:
            _send(handler, 404, b"not found", "text/plain")
        elif flaky_now:
            _send(handler, 500, b"try again", "text/plain")
        elif post.id in self.html_ids:
            _send(handler, 200, b"<!DOCTYPE html><html><body>Please verify you are human</body></html>", "text/html")
        else:
            data = self.image_bytes(post, kind)
            ctype = {"png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(post.ext if kind == "original" else "jpg", "image/jpeg")
            if kind == "original" and post.ext in ("webm", "mp4", "zip"):
                ctype = "application/octet-stream"
            if post.id in self.trickle_ids:
                self._trickle(handler, data, ctype)
            elif post.id in self.truncated_ids:
                _send(handler, 200, data, ctype, cut_at=len(data) // 2)
            else:
                _send(handler, 200, data, ctype)

    def _trickle(self, handler, body: bytes, ctype: str) -> None:
        """All of `body` announced, one byte sent per `trickle_interval`, bounded by `trickle_max_s` (http_fixture's trickle)."""
        from tests.http_fixture import trickle

        trickle(body, self.trickle_interval, self.trickle_max_s, ctype)(handler)


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: "dict | None" = None, cut_at: "int | None" = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    if cut_at is not None:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body if cut_at is None else body[:cut_at])
    handler.wfile.flush()
    if cut_at is not None:
        handler.close_connection = True


def _render(post: FakePost, kind: str, size: tuple[int, int]) -> bytes:
    """Small valid image bytes, the same every time for a post (colours and blocks from its md5)."""
    if kind == "original" and post.ext in ("webm", "mp4", "zip"):
        return b"\x1aE\xdf\xa3 not really a video " + post.md5.encode()
    from PIL import Image, ImageDraw

    seed = bytes.fromhex(post.md5)
    width, height = size if kind != "preview" else (size[0] // 2, size[1] // 2)
    image = Image.new("RGB", (width, height), tuple(seed[:3]))
    draw = ImageDraw.Draw(image)
    for i in range(4):  # a few blocks so images differ in shape, not just colour
        x, y = seed[3 + i] % width, seed[7 + i] % height
        draw.rectangle([x, y, x + width // 3, y + height // 3], fill=tuple(seed[10 + i: 13 + i]))
    fmt = {"png": "PNG", "gif": "GIF", "webp": "WEBP"}.get(post.ext, "JPEG") if kind == "original" else "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
