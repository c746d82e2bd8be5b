"""Booru clients (Gelbooru, Safebooru, Danbooru) and the guide's search flow.

The flow: `client.count(tags)` and `client.browser_url(tags)` and `client.previews(tags)` let the
person check a search; `collect(client, tags, ...)` then pages through the results and keeps the
posts worth downloading (png/jpg, the sample for huge images, optionally no child posts);
`save_url_list` keeps the list as the notebook did. Downloading lives in `downloader.py`.

Secrets (Gelbooru's api_key/user_id, Danbooru's login/api_key) never appear in a message or a log
line: every URL or error text shown goes through `BooruClient.mask`. They are kept in
`<config home>/lora_gradio/credentials.toml`, readable only by the user.
"""

from __future__ import annotations

import html
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlencode, urlsplit

import requests

from lora_gradio.engine.downloader import GuardedAdapter, StreamAborted, TransferGuard
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.fsutil import atomic_path, atomic_write_text
from lora_gradio.engine.progress import Progress

USER_AGENT = "lora_gradio/0.1 (+LoRA dataset tool)"
TIMEOUT = (10, 30)  # connect, read (seconds): each wait for the next bytes
API_DEADLINE_S = 60.0  # one API answer, whole: a server that trickles bytes is cut off here
SITES = ("gelbooru", "safebooru", "danbooru")
GELBOORU_ACCOUNT_PAGE = "https://gelbooru.com/index.php?page=account&s=options"
DANBOORU_API_KEY_PAGE = "https://danbooru.donmai.us/profile (API Key section)"

IMAGE_EXTS = {"png", "jpg", "jpeg"}
VIDEO_OR_ANIMATION_EXTS = {"webm", "mp4", "gif", "zip", "swf", "mkv", "mov", "avi", "apng"}

# Reasons in `Collected.skipped` (shown to the user as "N <reason>").
SKIP_VIDEO = "video or animation"
SKIP_PARENT = "has a parent"
SKIP_NO_URL = "no file url"
SKIP_HIDDEN = "hidden"  # Danbooru hides file_url of some posts from anonymous/basic users
SKIP_DUPLICATE = "duplicate"
SKIP_WEBP = "webp"
SKIP_OTHER_TYPE = "other file type"

# Query parameters that carry secrets; masked in anything shown.
_SECRET_PARAMS = re.compile(r"((?:api_key|user_id|login|password)=)[^&\s'\"]*", re.IGNORECASE)


@dataclass
class Post:
    site: str
    id: int
    md5: str
    file_url: str  # what to download: the original, or the sample once `collect` chose it
    width: int
    height: int
    ext: str  # extension of `file_url`, lower-case, no dot
    tags: list[str]
    rating: str
    score: int
    source: str
    parent_id: "int | None"
    preview_url: str
    post_url: str
    original_url: str = ""
    sample_url: str = ""
    uses_sample: bool = False
    hidden: bool = False  # the site withheld the file (Danbooru)

    @property
    def has_parent(self) -> bool:
        return bool(self.parent_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sized(self, max_resolution: int) -> "Post":
        """This post downloading the sample instead when the original has more than max_resolution^2 pixels."""
        if self.sample_url and self.width * self.height > max_resolution * max_resolution:
            return replace(self, file_url=self.sample_url, ext=_url_ext(self.sample_url) or "jpg", uses_sample=True)
        return self


@dataclass
class Collected:
    posts: list[Post] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    count: "int | None" = None  # the site's total for the search (None when it does not say)
    scanned: int = 0


def _url_ext(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _retry_after(value: "str | None") -> "float | None":
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _BadRedirect(Exception):
    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


def _refuse_odd_redirects(response: requests.Response, *args, **kwargs) -> None:
    # A response hook runs on every hop before requests follows it: stop at ftp:, file:, javascript: ...
    if response.is_redirect:
        location = response.headers.get("Location", "")
        scheme = urlsplit(location).scheme.lower()
        if scheme and scheme not in ("http", "https"):
            raise _BadRedirect(location)


def make_session() -> requests.Session:
    """A session with a descriptive User-Agent that refuses redirects to non-http(s) URLs, whose
    requests a `TransferGuard` can abort at any point (a deadline, a cancel)."""
    session = requests.Session()
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.hooks["response"].append(_refuse_odd_redirects)
    return session


class _Cursor:
    """Where a paged search is: how many posts were given and the lowest id seen (for id:< paging)."""

    def __init__(self, limit: "int | None"):
        self.limit, self.given, self.lowest_id = limit, 0, None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.given >= self.limit

    def take(self, posts: Iterable["Post"]) -> Iterator["Post"]:
        for post in posts:
            if self.full:
                return
            self.lowest_id = post.id if self.lowest_id is None else min(self.lowest_id, post.id)
            self.given += 1
            yield post


class BooruClient:
    """Shared HTTP handling: retries with back-off, clear errors, masking of secrets."""

    site = "booru"
    name = "the booru"
    default_base_url = ""
    page_size = 100

    def __init__(self, base_url: "str | None" = None, *, page_delay: float = 0.1, retries: int = 4, backoff: float = 1.0,
                 max_wait: float = 60.0, timeout: tuple[float, float] = TIMEOUT, session: "requests.Session | None" = None,
                 deadline: float = API_DEADLINE_S):
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        scheme = urlsplit(self.base_url).scheme.lower()
        if scheme not in ("http", "https") or not urlsplit(self.base_url).netloc:
            raise UserError(f"The address '{self.base_url}' is not an http(s) URL: give a --base-url like {self.default_base_url}.")
        self.page_delay = page_delay
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self.deadline = deadline  # seconds for one answer, whole (a session of make_session() is cut off in time)
        self.session = session or make_session()

    def __repr__(self) -> str:  # never shows credentials
        return f"{type(self).__name__}({self.base_url!r})"

    # --- what subclasses provide -------------------------------------------------------------
    def count(self, tags: str, progress: "Progress | None" = None) -> "int | None":
        """The site's number of posts for `tags` (None when it does not say)."""
        raise NotImplementedError

    def browser_url(self, tags: str) -> str:
        raise NotImplementedError

    def posts(self, tags: str, limit: "int | None" = None, progress: "Progress | None" = None) -> Iterator[Post]:
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        return []

    def _auth(self) -> "tuple[str, str] | None":
        return None

    def _explain_status(self, response: requests.Response, tags: str) -> "str | None":
        """A site-specific message for an error status, or None for the generic one."""
        return None

    # --- shared -------------------------------------------------------------------------------
    def previews(self, tags: str, n: int = 6) -> list[Post]:
        """The first few image posts of the search, for thumbnails before confirming."""
        found: list[Post] = []
        for post in self.posts(tags, limit=max(n * 4, 20)):
            if post.preview_url and post.ext in IMAGE_EXTS | {"webp"}:
                found.append(post)
                if len(found) >= n:
                    break
        return found

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc

    def mask(self, text: str) -> str:
        """`text` with every secret query value and every secret itself replaced by ***."""
        text = _SECRET_PARAMS.sub(r"\1***", str(text))
        for secret in self._secrets():
            if secret and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text

    def _pause(self, seconds: float, progress: Progress) -> None:
        end = time.monotonic() + seconds
        while True:
            progress.check_cancel()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def _fetch(self, url: str, params: dict[str, Any], progress: Progress) -> requests.Response:
        """One GET, whole, under the answer's deadline and the cancel check: a server that sends a
        byte now and then cannot hold the search (nor a cancel) longer than that."""
        guard = TransferGuard(deadline_s=self.deadline, cancel=progress.cancelled)
        with guard:
            try:
                response = self.session.get(url, params=params, timeout=self.timeout, auth=self._auth())
            except requests.RequestException:
                guard.raise_if_tripped()
                raise
            guard.raise_if_tripped()  # an answer cut by the guard may look whole (no Content-Length)
            guard.detach_all()
            return response

    def _get(self, path: str, params: dict[str, Any], tags: str, progress: Progress) -> requests.Response:
        """GET with retries on 429, 5xx and connection errors; any other failure becomes a `UserError`."""
        url = self.base_url + path
        shown = self.mask(url + "?" + urlencode(params))
        last_problem = ""
        for attempt in range(self.retries + 1):
            progress.check_cancel()
            try:
                response = self._fetch(url, params, progress)
            except StreamAborted as exc:
                if exc.why == "cancel":
                    raise Cancelled("cancelled by the user") from None
                last_problem = "deadline"
                wait = self.backoff * 2 ** attempt
                problem = exc.reason
            except _BadRedirect as exc:
                raise UserError(f"{self.name} redirected to '{self.mask(exc.location)}', which is not an http(s) address: check --base-url (only http and https are followed).") from None
            except requests.exceptions.TooManyRedirects:
                raise UserError(f"{self.name} redirected too many times for {shown}: check --base-url.") from None
            except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
                raise UserError(f"{self.name} sent an address that cannot be fetched ({self.mask(exc)}): check --base-url.") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                last_problem = "connection"
                wait = self.backoff * 2 ** attempt
                problem = self.mask(type(exc).__name__)
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last_problem = f"HTTP {response.status_code}"
                    header_wait = _retry_after(response.headers.get("Retry-After"))
                    wait = header_wait if header_wait is not None else self.backoff * 2 ** attempt
                    problem = last_problem
                    response.close()
                else:
                    if response.status_code >= 400:
                        self._raise_for_status(response, tags, shown)
                    return response
            if attempt < self.retries:
                wait = min(wait, self.max_wait)
                progress.log(f"{self.name}: {problem}, retrying in {wait:.1f} s (attempt {attempt + 2} of {self.retries + 1})")
                self._pause(wait, progress)
        if last_problem == "connection":
            raise UserError(f"cannot reach {self.host} ({self.name}): check your connection, or --base-url, and try again.")
        if last_problem == "deadline":
            raise UserError(f"{self.name} took longer than {self.deadline:g} s to answer, {self.retries + 1} times ({shown}): the site is very slow or stuck; try again later.")
        if last_problem == "HTTP 429":
            raise UserError(f"{self.name} kept answering 'too many requests' (HTTP 429) after {self.retries + 1} tries: wait a few minutes and run again.")
        raise UserError(f"{self.name} kept failing ({last_problem}) after {self.retries + 1} tries: the site may be down, try again later.")

    def _raise_for_status(self, response: requests.Response, tags: str, shown: str) -> None:
        special = self._explain_status(response, tags)
        if special:
            raise UserError(special)
        code = response.status_code
        if code == 404:
            raise UserError(f"{self.name} has no API at {self.mask(response.url)} (HTTP 404): check --base-url.")
        if code == 403:
            raise UserError(f"{self.name} refused access (HTTP 403) to {shown}: the site may block this network or need an account; try again later or give credentials.")
        raise UserError(f"{self.name} answered HTTP {code} for {shown}: check the tags and --base-url.")

    def _json(self, response: requests.Response) -> Any:
        """The response's JSON; an empty body counts as no results (None)."""
        text = response.text
        if not text.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise UserError(f"{self.name} sent a malformed or truncated response (not valid JSON) for {self.mask(response.url)}: try again; if it persists, check --base-url points at a {self.name} site.") from None

    def _malformed(self, what: str, response: requests.Response) -> UserError:
        return UserError(f"{self.name} sent a malformed response ({what}) for {self.mask(response.url)}: try again; if it persists, check --base-url points at a {self.name} site.")


class GelbooruClient(BooruClient):
    """Gelbooru's `dapi` (json=1): pages of 100 by `pid`; past ~20,000 deep, `id:<LAST_ID`."""

    site = "gelbooru"
    name = "Gelbooru"
    default_base_url = "https://gelbooru.com"
    deep_limit = 20000  # the API serves offsets below this only

    def __init__(self, base_url: "str | None" = None, api_key: str = "", user_id: str = "", *, deep_limit: "int | None" = None, **options: Any):
        super().__init__(base_url, **options)
        self.api_key = (api_key or "").strip()
        self.user_id = str(user_id or "").strip()
        if deep_limit is not None:
            self.deep_limit = deep_limit

    def _secrets(self) -> list[str]:
        return [self.api_key, self.user_id]

    def _credential_params(self) -> dict[str, str]:
        return {"api_key": self.api_key, "user_id": self.user_id} if self.api_key or self.user_id else {}

    def _explain_status(self, response: requests.Response, tags: str) -> "str | None":
        if response.status_code != 401:
            return None
        if self._credential_params():
            return (f"Gelbooru rejected the API key and user id (HTTP 401): copy both again from {GELBOORU_ACCOUNT_PAGE} "
                    "(the user id is a number) and give them with --api-key K --user-id U, or in the page's API key and user id fields.")
        return (f"Gelbooru answered 401 (authentication required): Gelbooru now requires an API key and user id (since mid-2025), "
                f"both found on {GELBOORU_ACCOUNT_PAGE}; give them with --api-key K --user-id U, or in the page's API key and user id fields.")

    def _query(self, tags: str, pid: int, limit: int, json: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = {"page": "dapi", "s": "post", "q": "index", "limit": limit, "pid": pid, "tags": tags}
        if json:
            params["json"] = 1
        params.update(self._credential_params())
        return params

    def browser_url(self, tags: str) -> str:
        return f"{self.base_url}/index.php?" + urlencode({"page": "post", "s": "list", "tags": tags})

    def post_url(self, post_id: int) -> str:
        return f"{self.base_url}/index.php?page=post&s=view&id={post_id}"

    def count(self, tags: str, progress: "Progress | None" = None) -> "int | None":
        response = self._get("/index.php", self._query(tags, 0, 1), tags, progress or Progress())
        data = self._json(response)
        if isinstance(data, dict):
            attributes = data.get("@attributes") or {}
            if "count" in attributes:
                return _int(attributes["count"], 0)
        return None

    def _page(self, tags: str, pid: int, limit: int, progress: Progress) -> list[dict]:
        response = self._get("/index.php", self._query(tags, pid, limit), tags, progress)
        return self._page_items(self._json(response), response)

    def _page_items(self, data: Any, response: requests.Response) -> list[dict]:
        if data is None:
            return []
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict):
            if "post" not in data:  # no results (or past the end)
                if data.get("success") is False or ("message" in data and "@attributes" not in data):
                    raise self._malformed(f"error: {self.mask(data.get('message', ''))}", response)
                return []
            items = data["post"]
            if isinstance(items, dict):  # a single result comes as an object
                items = [items]
        else:
            raise self._malformed("unexpected JSON", response)
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise self._malformed("posts are not objects", response)
        return items

    def _post(self, item: dict) -> Post:
        post_id = _int(item.get("id"))
        # Only answers without the key at all (old Safebooru) get URLs built from directory + image;
        # an empty file_url means the site withholds the file.
        legacy = "file_url" not in item
        original = str(self._legacy_file_url(item) if legacy else item.get("file_url") or "")
        sample = str(item.get("sample_url") or "")
        if legacy and _int(item.get("sample")) and item.get("directory") and item.get("image"):
            sample = self._legacy_sample_url(item)
        if sample == original:
            sample = ""
        preview = item.get("preview_url") or self._legacy_preview_url(item)
        tags = html.unescape(str(item.get("tags") or "")).split()
        return Post(
            site=self.site, id=post_id, md5=str(item.get("md5") or item.get("hash") or "").lower(),
            file_url=original, width=_int(item.get("width")), height=_int(item.get("height")),
            ext=_url_ext(original) or _url_ext(str(item.get("image") or "")), tags=tags,
            rating=str(item.get("rating") or ""), score=_int(item.get("score")), source=str(item.get("source") or ""),
            parent_id=_int(item.get("parent_id")) or None, preview_url=preview, post_url=self.post_url(post_id),
            original_url=original, sample_url=sample,
        )

    # Older Gelbooru-software responses (Safebooru) name the file by `directory` + `image` only.
    def _legacy_file_url(self, item: dict) -> str:
        if item.get("directory") and item.get("image"):
            return f"{self.base_url}/images/{item['directory']}/{item['image']}"
        return ""

    def _legacy_sample_url(self, item: dict) -> str:
        stem = str(item["image"]).rsplit(".", 1)[0]
        return f"{self.base_url}/samples/{item['directory']}/sample_{stem}.jpg"

    def _legacy_preview_url(self, item: dict) -> str:
        if item.get("directory") and item.get("image"):
            stem = str(item["image"]).rsplit(".", 1)[0]
            return f"{self.base_url}/thumbnails/{item['directory']}/thumbnail_{stem}.jpg"
        return ""

    def posts(self, tags: str, limit: "int | None" = None, progress: "Progress | None" = None) -> Iterator[Post]:
        progress = progress or Progress()
        page_size = self.page_size if limit is None else max(1, min(self.page_size, limit))
        query, pid, cursor = tags, 0, _Cursor(limit)
        while not cursor.full:
            if (pid + 1) * page_size > self.deep_limit:
                # The API stops serving ~20,000 deep: carry on below the lowest id seen, from page 0.
                lowest_id = cursor.lowest_id
                if lowest_id is None or "sort:" in tags.lower():
                    progress.log(f"{self.name} serves at most {self.deep_limit} posts for a sorted search; stopping there.")
                    return
                query, pid = f"{tags} id:<{lowest_id}".strip(), 0
                progress.log(f"{self.name}: past {self.deep_limit} posts, continuing with id:<{lowest_id}")
            if cursor.given and self.page_delay:
                self._pause(self.page_delay, progress)
            items = self._page(query, pid, page_size, progress)
            yield from cursor.take(self._post(item) for item in items)
            if cursor.full or len(items) < page_size:
                return
            pid += 1


class SafebooruClient(GelbooruClient):
    """Safebooru runs Gelbooru's software: same `dapi`, no credentials, json=1 is a plain array."""

    site = "safebooru"
    name = "Safebooru"
    default_base_url = "https://safebooru.org"

    def __init__(self, base_url: "str | None" = None, **options: Any):
        super().__init__(base_url, **options)

    def _explain_status(self, response: requests.Response, tags: str) -> "str | None":
        return None

    def count(self, tags: str, progress: "Progress | None" = None) -> "int | None":
        # json=1 carries no total here; the XML answer has <posts count="N">.
        response = self._get("/index.php", self._query(tags, 0, 0, json=False), tags, progress or Progress())
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError:
            raise self._malformed("not valid XML", response) from None
        return _int(root.get("count"), 0) if root.get("count") is not None else None


class DanbooruClient(BooruClient):
    """Danbooru's `/posts.json`: pages of 200 by `page=N`; deep results by `page=b<LAST_ID>`."""

    site = "danbooru"
    name = "Danbooru"
    default_base_url = "https://danbooru.donmai.us"
    page_size = 200
    max_page = 1000  # the API refuses numbered pages beyond this

    def __init__(self, base_url: "str | None" = None, login: str = "", api_key: str = "", *, max_page: "int | None" = None, **options: Any):
        super().__init__(base_url, **options)
        self.login = (login or "").strip()
        self.api_key = (api_key or "").strip()
        if max_page is not None:
            self.max_page = max_page

    def _secrets(self) -> list[str]:
        return [self.login, self.api_key]

    def _auth(self) -> "tuple[str, str] | None":
        # HTTP basic auth keeps the key out of URLs (and so out of any logged URL).
        return (self.login, self.api_key) if self.login and self.api_key else None

    def _explain_status(self, response: requests.Response, tags: str) -> "str | None":
        message = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                message = str(body.get("message") or body.get("error") or "")
        except ValueError:
            message = response.text[:200]
        if response.status_code == 422 and ("more than 2 tags" in message or "TagLimitError" in message):
            return ("Danbooru lets anonymous and basic users search at most 2 tags at once (it answered: "
                    f"\"{message.strip().rstrip('.')}\"): log in with your Danbooru user name and API key "
                    f"(from {DANBOORU_API_KEY_PAGE}; --login NAME --api-key KEY, or the page's fields), or search with 2 tags or fewer.")
        if response.status_code == 401:
            return f"Danbooru rejected the login and API key (HTTP 401): copy the API key again from {DANBOORU_API_KEY_PAGE} and check the user name."
        if response.status_code == 410:
            return f"Danbooru will not page this deep (HTTP 410: {self.mask(message)}): narrow the search or lower --limit."
        if response.status_code in (400, 422) and message:
            return f"Danbooru refused the search '{tags}' ({self.mask(message)}): check the tags."
        return None

    def browser_url(self, tags: str) -> str:
        return f"{self.base_url}/posts?" + urlencode({"tags": tags})

    def count(self, tags: str, progress: "Progress | None" = None) -> "int | None":
        response = self._get("/counts/posts.json", {"tags": tags}, tags, progress or Progress())
        data = self._json(response)
        if isinstance(data, dict) and isinstance(data.get("counts"), dict):
            value = data["counts"].get("posts")
            return None if value is None else _int(value, 0)
        return None

    def _post(self, item: dict) -> Post:
        post_id = _int(item.get("id"))
        original = item.get("file_url") or ""
        large = item.get("large_file_url") or ""
        ext = str(item.get("file_ext") or _url_ext(original)).lower()
        return Post(
            site=self.site, id=post_id, md5=str(item.get("md5") or "").lower(), file_url=original,
            width=_int(item.get("image_width")), height=_int(item.get("image_height")), ext=ext,
            tags=str(item.get("tag_string") or "").split(), rating=str(item.get("rating") or ""),
            score=_int(item.get("score")), source=str(item.get("source") or ""),
            parent_id=_int(item.get("parent_id")) or None, preview_url=str(item.get("preview_file_url") or ""),
            post_url=f"{self.base_url}/posts/{post_id}", original_url=original,
            sample_url=large if large and large != original else "", hidden=not original,
        )

    def posts(self, tags: str, limit: "int | None" = None, progress: "Progress | None" = None) -> Iterator[Post]:
        progress = progress or Progress()
        page_size = self.page_size if limit is None else max(1, min(self.page_size, limit))
        page: "int | str" = 1
        cursor = _Cursor(limit)
        while not cursor.full:
            if isinstance(page, int) and page > self.max_page:
                if cursor.lowest_id is None or "order:" in tags.lower():
                    progress.log(f"{self.name} serves at most {self.max_page} pages for an ordered search; stopping there.")
                    return
                progress.log(f"{self.name}: past page {self.max_page}, continuing below id {cursor.lowest_id}")
                page = f"b{cursor.lowest_id}"
            if cursor.given and self.page_delay:
                self._pause(self.page_delay, progress)
            response = self._get("/posts.json", {"tags": tags, "limit": page_size, "page": page}, tags, progress)
            data = self._json(response)
            if data is None:
                return
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise self._malformed("expected a list of posts", response)
            # Pages can come back short (posts hidden from this account), so only an empty page ends.
            if not data:
                return
            yield from cursor.take(self._post(item) for item in data)
            if cursor.full:
                return
            # Numbered pages until the limit, then always "the posts below the lowest id so far".
            page = page + 1 if isinstance(page, int) else f"b{cursor.lowest_id}"


CLIENTS: dict[str, type[BooruClient]] = {"gelbooru": GelbooruClient, "safebooru": SafebooruClient, "danbooru": DanbooruClient}


def make_client(site: str, base_url: "str | None" = None, credentials: "dict | None" = None, **options: Any) -> BooruClient:
    """The client for `site`; `credentials` as saved: gelbooru {api_key, user_id}, danbooru {login, api_key}
    (`user_id` is taken as Danbooru's login too, so one pair of fields serves both)."""
    site = (site or "").strip().lower()
    if site not in CLIENTS:
        raise UserError(f"Unknown site '{site}': choose one of {', '.join(SITES)}.")
    creds = {k: str(v) for k, v in (credentials or {}).items() if v}
    if site == "gelbooru":
        return GelbooruClient(base_url, api_key=creds.get("api_key", ""), user_id=creds.get("user_id", ""), **options)
    if site == "danbooru":
        return DanbooruClient(base_url, login=creds.get("login") or creds.get("user_id", ""), api_key=creds.get("api_key", ""), **options)
    return SafebooruClient(base_url, **options)


# --- the guide's collection step ---------------------------------------------------------------

def skip_reason(post: Post, skip_parents: bool, allow_webp: bool) -> "str | None":
    """Why a post is left out, or None to keep it (duplicates are judged by `collect`)."""
    if post.hidden:
        return SKIP_HIDDEN
    if not post.file_url:
        return SKIP_NO_URL
    if post.ext in VIDEO_OR_ANIMATION_EXTS:
        return SKIP_VIDEO
    if post.ext == "webp" and not allow_webp:
        return SKIP_WEBP
    if post.ext not in IMAGE_EXTS and post.ext != "webp":
        return SKIP_OTHER_TYPE
    if skip_parents and post.has_parent:
        return SKIP_PARENT
    return None


def collect(client: BooruClient, tags: str, limit: int = 1000, max_resolution: int = 3072, skip_parents: bool = True,
            allow_webp: bool = False, progress: "Progress | None" = None) -> Collected:
    """Up to `limit` downloadable posts for `tags`, in the booru's order, one per md5."""
    progress = progress or Progress()
    result = Collected(count=client.count(tags, progress))
    seen_md5: set[str] = set()
    for post in client.posts(tags, limit=None, progress=progress):
        result.scanned += 1
        reason = skip_reason(post, skip_parents, allow_webp)
        if reason is None and (not post.md5 or post.md5 in seen_md5):
            reason = SKIP_DUPLICATE if post.md5 else SKIP_NO_URL
        if reason:
            result.skipped[reason] = result.skipped.get(reason, 0) + 1
        else:
            seen_md5.add(post.md5)
            result.posts.append(post.sized(max_resolution))
        if result.scanned % client.page_size == 0 or len(result.posts) >= limit:
            progress.update(len(result.posts), limit, f"found {len(result.posts)} image(s) on {client.name}",
                            scanned=result.scanned, skipped=sum(result.skipped.values()))
        if len(result.posts) >= limit:
            break
    progress.update(len(result.posts), limit, f"found {len(result.posts)} image(s) on {client.name}",
                    scanned=result.scanned, skipped=sum(result.skipped.values()))
    return result


def save_url_list(path: "str | Path", posts: list[Post]) -> None:
    """The download list, one URL per line (the notebook's file in the config folder)."""
    atomic_write_text(Path(path), "".join(post.file_url + "\n" for post in posts))


# --- credentials ---------------------------------------------------------------------------------

def config_home() -> Path:
    for var in ("LORA_GRADIO_CONFIG_HOME", "XDG_CONFIG_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path.home() / ".config"


def credentials_path() -> Path:
    return config_home() / "lora_gradio" / "credentials.toml"


def _read_all_credentials() -> dict[str, dict[str, str]]:
    import tomllib

    from lora_gradio.engine.fsutil import read_user_toml

    path = credentials_path()
    try:
        data = read_user_toml(path, "The credentials file", "delete it and enter the keys again")
    except FileNotFoundError:
        return {}
    return {site: {k: str(v) for k, v in values.items()} for site, values in data.items() if isinstance(values, dict)}


def load_credentials(site: str) -> dict[str, str]:
    """The saved credentials of `site` ({} when none)."""
    return dict(_read_all_credentials().get(site, {}))


def save_credentials(site: str, **values: "str | None") -> Path:
    """Merge `values` into `site`'s saved credentials (None or "" removes a key); the file is mode 0600."""
    import tomli_w

    everything = _read_all_credentials()
    entry = everything.setdefault(site, {})
    for key, value in values.items():
        if value is None or str(value).strip() == "":
            entry.pop(key, None)
        else:
            entry[key] = str(value).strip()
    if not entry:
        everything.pop(site)
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)  # before any secret is written (mkstemp already makes it 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tomli_w.dumps(everything))
            f.flush()
            os.fsync(f.fileno())
    return path
