"""Booru clients and the collection step, against the local fake booru (tests/booru_server.py)."""

from __future__ import annotations

import os
import socket
import stat
import time
from urllib.parse import urlsplit

import pytest
import requests

from lora_gradio.engine import scrape
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.scrape import (DanbooruClient, GelbooruClient, SafebooruClient, collect, load_credentials,
                                       make_client, save_credentials, save_url_list)
from tests.booru_server import (DANBOORU_API_KEY, DANBOORU_LOGIN, GELBOORU_API_KEY, GELBOORU_USER_ID, VIDEO_EXTS,
                                BooruServer)

FAST = {"page_delay": 0, "backoff": 0.01}


class Recorder(Progress):
    def __init__(self, cancel_after_logs: "int | None" = None):
        self.lines: list[str] = []
        self.updates: list[tuple] = []
        self.cancel_after_logs = cancel_after_logs

    def update(self, done, total=None, message="", **data):
        self.updates.append((done, total, message, data))

    def log(self, message):
        self.lines.append(message)

    def cancelled(self):
        return self.cancel_after_logs is not None and len(self.lines) >= self.cancel_after_logs


@pytest.fixture(scope="module")
def server():
    with BooruServer(n_posts=260) as srv:
        yield srv


@pytest.fixture(autouse=True)
def clean_server(request):
    yield
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv._state.faults.clear()
        srv.single_object = False
        srv.safebooru_file_url = False
        srv.require_gelbooru_auth = True


def gelbooru(srv, **options) -> GelbooruClient:
    return GelbooruClient(srv.gelbooru_url, api_key=GELBOORU_API_KEY, user_id=GELBOORU_USER_ID, **{**FAST, **options})


def api_requests(srv, marker: str) -> list[str]:
    return [path for path, _ in srv.requests if marker in path]


def expected_reason(post, skip_parents=True, allow_webp=False, site="gelbooru"):
    """The reasons computed independently from the fake posts, in `skip_reason`'s order."""
    if post.no_file_url and site != "safebooru":
        return "hidden" if site == "danbooru" else "no file url"
    if post.ext in VIDEO_EXTS:
        return "video or animation"
    if post.ext == "webp" and not allow_webp:
        return "webp"
    if skip_parents and post.parent_id:
        return "has a parent"
    return None


# --- searching and paging ------------------------------------------------------------------------

def test_gelbooru_count_browser_url_and_paging_past_100(server):
    client = gelbooru(server)
    assert client.count("fake_tag") == 260
    assert client.count("red_hair -1boy") == len(server.search("red_hair -1boy"))
    assert client.browser_url("1girl -sex score:>10") == f"{server.gelbooru_url}/index.php?page=post&s=list&tags=1girl+-sex+score%3A%3E10"
    posts = list(client.posts("fake_tag"))
    assert [p.id for p in posts] == [p.id for p in server.posts]
    assert posts[0].post_url == f"{server.gelbooru_url}/index.php?page=post&s=view&id={server.posts[0].id}"
    assert posts[0].rating == "general" and posts[0].source.startswith("https://example.com/")
    assert len(list(client.posts("fake_tag", limit=150))) == 150


def test_gelbooru_deep_paging_continues_with_id_below():
    with BooruServer(n_posts=650, gelbooru_deep_limit=300) as srv:
        client = gelbooru(srv, deep_limit=300)
        progress = Recorder()
        posts = list(client.posts("fake_tag", progress=progress))
        assert [p.id for p in posts] == [p.id for p in srv.posts]
        assert any("id%3A%3C" in path for path in api_requests(srv, "/gelbooru/index.php"))
        assert any("id:<" in line for line in progress.lines)
        # A sorted search cannot be continued by id: it stops at the limit and says so.
        sorted_posts = list(client.posts("fake_tag sort:score", progress=progress))
        assert len(sorted_posts) == 300 and "sorted search" in progress.lines[-1]


def test_danbooru_paging_switches_to_b_id_for_deep_pages():
    with BooruServer(n_posts=650, danbooru_max_page=2) as srv:
        client = DanbooruClient(srv.danbooru_url, max_page=2, **FAST)
        posts = list(client.posts("fake_tag"))
        visible = [p.id for p in srv.posts]
        assert [p.id for p in posts] == visible
        pages = [path for path in api_requests(srv, "/danbooru/posts.json")]
        assert any("page=b" in path for path in pages) and any("page=2" in path for path in pages)
        assert client.count("fake_tag") == 650
        assert client.browser_url("1girl solo") == f"{srv.danbooru_url}/posts?tags=1girl+solo"


def test_gelbooru_single_object_and_no_results(server):
    server.single_object = True
    posts = list(gelbooru(server).posts("one_of_a_kind"))
    assert len(posts) == 1 and "one_of_a_kind" in posts[0].tags
    assert gelbooru(server).count("nothing_here") == 0
    assert list(gelbooru(server).posts("nothing_here")) == []
    found = collect(gelbooru(server), "nothing_here")
    assert found.posts == [] and found.count == 0


def test_gelbooru_tags_are_unescaped(server):
    posts = list(gelbooru(server).posts("fake_tag", limit=1))
    assert "jeanne_d'arc" in posts[0].tags


def test_safebooru_plain_array_and_missing_file_url(server):
    client = SafebooruClient(server.safebooru_url, **FAST)
    assert client.count("fake_tag") == 260
    posts = list(client.posts("fake_tag"))
    assert len(posts) == 260
    first = server.posts[0]
    assert posts[0].file_url == f"{server.safebooru_url}/images/{first.directory}/{first.image}"
    assert posts[0].md5 == first.md5
    # The URL built from directory + image really serves the image.
    assert requests.get(posts[0].file_url, timeout=5).content == server.image_bytes(first)
    huge = next(p for p in posts if server.by_md5[p.md5].has_sample)
    assert requests.get(huge.sample_url, timeout=5).headers["Content-Type"] == "image/jpeg"
    server.safebooru_file_url = True
    assert next(SafebooruClient(server.safebooru_url, **FAST).posts("fake_tag")).file_url == server.file_url(first)
    assert list(client.posts("nothing_here")) == [] and client.count("nothing_here") == 0


# --- the collection step ---------------------------------------------------------------------

def test_collect_filters_with_reasons_and_keeps_order(server):
    found = collect(gelbooru(server), "fake_tag", limit=1000)
    reasons: dict[str, int] = {}
    kept = []
    for post in server.posts:
        reason = expected_reason(post)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
        else:
            kept.append(post.id)
    assert found.skipped == reasons
    assert set(reasons) == {"video or animation", "webp", "has a parent", "no file url"}
    assert [p.id for p in found.posts] == kept
    assert found.count == 260 and found.scanned == 260
    assert all(p.ext in ("png", "jpg", "jpeg") for p in found.posts)


def test_collect_options_limit_webp_parents(server):
    found = collect(gelbooru(server), "fake_tag", limit=1000, skip_parents=False, allow_webp=True)
    assert "webp" not in found.skipped and "has a parent" not in found.skipped
    assert any(p.ext == "webp" for p in found.posts) and any(p.parent_id for p in found.posts)
    before = len(server.requests)
    progress = Recorder()
    few = collect(gelbooru(server), "fake_tag", limit=20, progress=progress)
    assert len(few.posts) == 20 and few.scanned < 100
    assert len(server.requests) - before == 2  # the count and one page, nothing more
    assert progress.updates[-1][:2] == (20, 20)


def test_collect_uses_the_sample_for_huge_images(server):
    found = collect(gelbooru(server), "fake_tag", limit=1000)
    huge = [p for p in found.posts if p.width * p.height > 3072 ** 2]
    assert huge and all(p.uses_sample and p.file_url == server.sample_url(server.by_md5[p.md5]) and p.ext == "jpg" for p in huge)
    small = [p for p in found.posts if p.width * p.height <= 3072 ** 2]
    assert all(not p.uses_sample and p.file_url == server.file_url(server.by_md5[p.md5]) for p in small)
    roomy = collect(gelbooru(server), "fake_tag", limit=1000, max_resolution=8000)
    assert not any(p.uses_sample for p in roomy.posts)


def test_collect_drops_duplicate_md5():
    with BooruServer(n_posts=30) as srv:
        srv.posts[1].md5 = srv.posts[0].md5  # a re-upload of the same file
        found = collect(gelbooru(srv), "fake_tag")
        assert found.skipped.get("duplicate") == 1
        assert len({p.md5 for p in found.posts}) == len(found.posts)


def test_danbooru_hidden_posts_samples_and_credentials(server):
    anonymous = DanbooruClient(server.danbooru_url, **FAST)
    found = collect(anonymous, "fake_tag")
    assert found.skipped["hidden"] == sum(1 for p in server.posts if p.no_file_url)
    assert "no file url" not in found.skipped
    assert any(p.uses_sample for p in found.posts)
    assert [p.id for p in found.posts] == [p.id for p in server.posts if not expected_reason(p, site="danbooru")]
    with pytest.raises(UserError) as info:
        anonymous.count("fake_tag 1girl solo")
    message = str(info.value)
    assert "at most 2 tags" in message and "You cannot search for more than 2 tags" in message
    assert "API key" in message and "2 tags or fewer" in message
    with pytest.raises(UserError, match="more than 2 tags"):
        list(anonymous.posts("fake_tag 1girl solo"))
    logged_in = make_client("danbooru", server.danbooru_url, {"login": DANBOORU_LOGIN, "api_key": DANBOORU_API_KEY}, **FAST)
    assert logged_in.count("fake_tag 1girl solo") == len(server.search("fake_tag 1girl solo"))
    assert DANBOORU_API_KEY not in " ".join(path for path, _ in server.requests)  # basic auth, not in the URL
    wrong = DanbooruClient(server.danbooru_url, login=DANBOORU_LOGIN, api_key="wrong-key-123", **FAST)
    with pytest.raises(UserError, match="rejected the login and API key") as info:
        wrong.count("fake_tag")
    assert "wrong-key-123" not in str(info.value)


def test_previews_and_url_list(server, tmp_path):
    previews = gelbooru(server).previews("fake_tag", n=6)
    assert len(previews) == 6 and all(p.preview_url and p.ext in ("png", "jpg", "webp") for p in previews)
    assert requests.get(previews[0].preview_url, timeout=5).content[:2] == b"\xff\xd8"
    found = collect(gelbooru(server), "fake_tag", limit=10)
    target = tmp_path / "config" / "urls.txt"
    save_url_list(target, found.posts)
    assert target.read_text().splitlines() == [p.file_url for p in found.posts]
    assert not [f for f in target.parent.iterdir() if f.name.endswith(".tmp")]


# --- errors -----------------------------------------------------------------------------------

def test_gelbooru_401_explains_api_key_and_user_id(server):
    with pytest.raises(UserError) as info:
        GelbooruClient(server.gelbooru_url, **FAST).count("fake_tag")
    message = str(info.value)
    assert "Gelbooru now requires an API key and user id (since mid-2025)" in message
    assert "https://gelbooru.com/index.php?page=account&s=options" in message
    assert "--api-key K --user-id U" in message and "page's API key and user id fields" in message
    with pytest.raises(UserError) as info:
        list(GelbooruClient(server.gelbooru_url, api_key="bad-key-777", user_id="999111", **FAST).posts("fake_tag"))
    assert "rejected the API key and user id" in str(info.value)
    assert "bad-key-777" not in str(info.value) and "999111" not in str(info.value)


def test_retry_after_429_then_success(server):
    server.fail_next(429, retry_after=1)
    progress = Recorder()
    start = time.monotonic()
    posts = list(gelbooru(server).posts("fake_tag", limit=5, progress=progress))
    assert len(posts) == 5 and time.monotonic() - start >= 0.9
    assert any("HTTP 429" in line and "retrying in 1.0 s" in line for line in progress.lines)


def test_retry_on_500_then_success_and_give_up(server):
    server.fail_next(500)
    assert gelbooru(server).count("fake_tag") == 260
    server.fail_next(503, times=3)
    with pytest.raises(UserError, match=r"kept failing \(HTTP 503\) after 3 tries"):
        gelbooru(server, retries=2).count("fake_tag")
    server.fail_next(429, retry_after=0, times=3)
    with pytest.raises(UserError, match="too many requests"):
        gelbooru(server, retries=2).count("fake_tag")


def test_truncated_json_is_a_clear_error(server):
    server.truncate_next()
    with pytest.raises(UserError, match="malformed or truncated response") as info:
        list(gelbooru(server).posts("fake_tag"))
    assert GELBOORU_API_KEY not in str(info.value) and "api_key=***" in str(info.value)
    server.truncate_next()
    with pytest.raises(UserError, match="malformed or truncated"):
        DanbooruClient(server.danbooru_url, **FAST).count("fake_tag")


def test_redirect_to_ftp_is_refused(server):
    server.redirect_next("ftp://files.example.com/posts.json")
    with pytest.raises(UserError, match="not an http\\(s\\) address"):
        SafebooruClient(server.safebooru_url, **FAST).count("fake_tag")
    # A redirect to http is followed as usual.
    server.redirect_next(f"{server.safebooru_url}/index.php?page=dapi&s=post&q=index&json=1&tags=fake_tag&limit=3")
    assert len(list(SafebooruClient(server.safebooru_url, **FAST).posts("fake_tag", limit=3))) == 3


def test_network_down_says_cannot_reach():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = GelbooruClient(f"http://127.0.0.1:{port}", api_key="k-secret-xyz", user_id="5551234", retries=1, **FAST)
    progress = Recorder()
    with pytest.raises(UserError, match=f"cannot reach 127.0.0.1:{port}.*check your connection") as info:
        collect(client, "fake_tag", progress=progress)
    text = str(info.value) + " ".join(progress.lines)
    assert "k-secret-xyz" not in text and "5551234" not in text


def test_bad_site_and_base_url():
    with pytest.raises(UserError, match="Unknown site"):
        make_client("e621")
    with pytest.raises(UserError, match="not an http"):
        make_client("safebooru", "ftp://example.com")
    assert isinstance(make_client("Safebooru"), SafebooruClient)
    danbooru = make_client("danbooru", credentials={"user_id": "someone", "api_key": "k"})
    assert isinstance(danbooru, DanbooruClient) and danbooru.login == "someone"


def test_user_agent_and_cancel(server):
    list(gelbooru(server).posts("fake_tag", limit=1))
    assert server.requests[-1][1]["User-Agent"].startswith("lora_gradio/")
    server.fail_next(500, times=5)
    with pytest.raises(Cancelled):
        collect(gelbooru(server, backoff=5), "fake_tag", progress=Recorder(cancel_after_logs=1))


# --- secrets ----------------------------------------------------------------------------------

def test_secrets_never_appear_in_logs_or_messages(server):
    client = gelbooru(server)
    progress = Recorder()
    server.fail_next(500)
    server.fail_next(429, retry_after=0)
    collect(client, "fake_tag", limit=150, progress=progress)
    server.truncate_next()
    with pytest.raises(UserError) as info:
        collect(client, "fake_tag", progress=progress)
    shown = " ".join(progress.lines) + str(info.value) + repr(client) + str(progress.updates)
    assert progress.lines  # the retries were logged
    for secret in (GELBOORU_API_KEY, GELBOORU_USER_ID):
        assert secret not in shown
    url = f"{server.gelbooru_url}/index.php?api_key={GELBOORU_API_KEY}&user_id={GELBOORU_USER_ID}&tags=x"
    assert client.mask(url) == f"{server.gelbooru_url}/index.php?api_key=***&user_id=***&tags=x"


def test_credentials_file_is_private_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADIO_CONFIG_HOME", str(tmp_path / "cfg"))
    assert load_credentials("gelbooru") == {}
    path = save_credentials("gelbooru", api_key="abc123", user_id="42")
    assert path == tmp_path / "cfg" / "lora_gradio" / "credentials.toml"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    save_credentials("danbooru", login="me", api_key="zzz")
    assert load_credentials("gelbooru") == {"api_key": "abc123", "user_id": "42"}
    assert load_credentials("danbooru") == {"login": "me", "api_key": "zzz"}
    save_credentials("gelbooru", api_key=None)
    assert load_credentials("gelbooru") == {"user_id": "42"}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [f for f in path.parent.iterdir() if f.name != "credentials.toml"]
    # Without our variable, XDG_CONFIG_HOME and then ~/.config.
    monkeypatch.delenv("LORA_GRADIO_CONFIG_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert scrape.credentials_path() == tmp_path / "xdg" / "lora_gradio" / "credentials.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert scrape.credentials_path() == tmp_path / "home" / ".config" / "lora_gradio" / "credentials.toml"
    (tmp_path / "home" / ".config" / "lora_gradio").mkdir(parents=True)
    scrape.credentials_path().write_text("not [valid")
    with pytest.raises(UserError, match="not valid TOML"):
        load_credentials("gelbooru")


def test_fake_booru_file_faults_for_the_downloader():
    with BooruServer(n_posts=12, latency=0.05) as srv:
        html_post, missing, cut, flaky, other = srv.posts[0], srv.posts[1], srv.posts[2], srv.posts[4], srv.posts[5]
        srv.html_ids, srv.missing_ids, srv.truncated_ids, srv.flaky_ids = {html_post.id}, {missing.id}, {cut.id}, {flaky.id}
        start = time.monotonic()
        answer = requests.get(srv.file_url(html_post), timeout=5)
        assert time.monotonic() - start >= 0.05
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/html"
        assert requests.get(srv.file_url(missing), timeout=5).status_code == 404
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(srv.file_url(cut), timeout=5)
        assert requests.get(srv.file_url(flaky), timeout=5).status_code == 500
        again = requests.get(srv.file_url(flaky), timeout=5)
        assert again.status_code == 200 and again.content == srv.image_bytes(flaky)
        assert srv.file_requests[urlsplit(srv.file_url(flaky)).path] == 2
        assert srv.image_bytes(other) == BooruServer(n_posts=12).image_bytes(other)  # deterministic per post
