"""The guide's step 2 as one run: search a booru, keep the list, download what is missing.

`scrape_project` is what the `scrape` command and the page's Download button run (as a job).
Each image's post id, source and booru tags are kept in the project (`_scrape/posts.jsonl`),
and the booru tags can become the initial captions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, parse_json_lines
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project
from lora_gradio.engine.settings_model import SettingsBase, to_dict, validate

SECTION = "scrape"
# Credentials reach a scrape job through its environment, never through files in the project.
CREDENTIALS_ENV = "LORA_GRADIO_BOORU_CREDENTIALS"
SCRAPE_FOLDER = "_scrape"


class ScrapeSettings(SettingsBase):
    """What the guide's scraper asks for; saved in the project's [scrape] section (never credentials)."""

    site: Literal["gelbooru", "safebooru", "danbooru"] = Field("gelbooru", description="Which booru to search. Gelbooru needs an API key and user id since 2025; Safebooru needs none.")
    tags: str = Field("", description="Tags as on the site, separated by spaces: 1girl -sex -greyscale score:>10 (underscores inside tags, - excludes).")
    limit: int = Field(1000, ge=1, le=20000, description="At most this many images (the guide: up to 1000).")
    max_resolution: int = Field(3072, ge=256, le=20000, description="Use the booru's smaller sample when an image has more pixels than this squared.")
    skip_parents: bool = Field(False, description="Skip posts that have a parent post (often near-duplicates or variants).")
    allow_webp: bool = Field(False, description="Also keep .webp images (png/jpg only by default, like the notebook).")
    write_tags: bool = Field(False, description="Write each post's booru tags as its caption (.txt), as a start before the tagger.")
    base_url: str = Field("", description="Another address for the site (a mirror); empty for the official one.")


def load_scrape_settings(project: Project) -> ScrapeSettings:
    return validate(ScrapeSettings, project.read_section(SECTION), where=f"In {project.settings_file} [{SECTION}]: ")


def save_scrape_settings(project: Project, settings: ScrapeSettings) -> None:
    project.write_section(SECTION, to_dict(settings))


@dataclass
class ScrapeReport:
    site: str
    tags: str
    found: int = 0
    kept: int = 0
    downloaded: int = 0
    already_had: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    captions_written: int = 0

    def summary(self) -> str:
        text = f"{self.site} '{self.tags}': {self.kept} image(s) to get, {self.downloaded} downloaded, {self.already_had} already in the dataset"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        if self.failed:
            text += f"; {len(self.failed)} failed ({first_few([f'{u}: {r}' for u, r in self.failed])}); run again to retry them"
        if self.captions_written:
            text += f"; {self.captions_written} caption(s) written from booru tags"
        return text + "."


def caption_from_tags(tags: list[str]) -> str:
    """Booru tags as a caption: underscores become spaces (except in kaomoji), joined by ', '."""
    from lora_gradio.engine.tags import display_tag

    return ", ".join(display_tag(tag) for tag in tags if tag)


def credentials_env(credentials: "dict | None") -> dict[str, str]:
    """`secret_env` for `jobs.start_job`: the credentials typed for this run only."""
    return {CREDENTIALS_ENV: json.dumps(credentials)} if credentials else {}


def client_for(settings: ScrapeSettings, credentials: "dict | None" = None):
    """A client with, in order: the credentials given, those of this job's environment, the saved ones."""
    import os

    from lora_gradio.engine.scrape import load_credentials, make_client

    creds = credentials
    if creds is None and os.environ.get(CREDENTIALS_ENV):
        creds = json.loads(os.environ[CREDENTIALS_ENV])
    if creds is None:
        creds = load_credentials(settings.site)
    return make_client(settings.site, base_url=settings.base_url or None, credentials=creds)


def preview_search(settings: ScrapeSettings, credentials: "dict | None" = None, n: int = 6) -> dict[str, Any]:
    """What the person sees before confirming: the count, a browser link and a few thumbnails."""
    if not settings.tags.strip():
        raise UserError("Type some tags first, e.g. `1girl solo -sex` (spaces between tags, underscores inside them).")
    client = client_for(settings, credentials)
    return {"count": client.count(settings.tags), "browser_url": client.browser_url(settings.tags), "previews": client.previews(settings.tags, n)}


def scrape_project(project: Project, settings: "dict | None" = None, credentials: "dict | None" = None, progress: "Progress | None" = None) -> ScrapeReport:
    """Search, save the URL list, download what is missing, keep each post's record."""
    from lora_gradio.engine.downloader import PARTIAL_FOLDER, DownloadItem, download_all
    from lora_gradio.engine.scrape import collect, save_url_list

    progress = progress or Progress()
    chosen = validate(ScrapeSettings, settings, where="scrape: ") if settings is not None else load_scrape_settings(project)
    if not chosen.tags.strip():
        raise UserError("No tags to search for: give some, e.g. --tags \"1girl solo -sex\".")
    from lora_gradio.engine.archive import refuse_linked_dataset

    refuse_linked_dataset(project)  # nothing is downloaded through a link
    client = client_for(chosen, credentials)
    report = ScrapeReport(site=chosen.site, tags=chosen.tags)
    progress.update(0, None, f"searching {chosen.site}")
    found = collect(client, chosen.tags, limit=chosen.limit, max_resolution=chosen.max_resolution, skip_parents=chosen.skip_parents, allow_webp=chosen.allow_webp, progress=progress)
    report.found, report.kept, report.skipped = found.count or 0, len(found.posts), dict(found.skipped)
    if not found.posts:
        raise UserError(f"No images found on {chosen.site} for '{chosen.tags}' (after leaving out {sum(found.skipped.values())} unusable posts): try fewer or other tags.")
    folder = project.config_dir / SCRAPE_FOLDER
    save_url_list(folder / f"urls-{chosen.site}.txt", found.posts)
    items = [DownloadItem(url=post.file_url, filename=f"{post.md5}.{post.ext}", md5=post.md5, meta={"post": post}) for post in found.posts]
    # Files still arriving wait in _scrape/partial (outside the dataset) and move in only when whole.
    result = download_all(items, project.dataset_dir, progress=progress, record_path=folder / "downloaded.jsonl", partial_dir=folder / PARTIAL_FOLDER)
    report.downloaded, report.already_had, report.failed = len(result.downloaded), len(result.skipped_existing), list(result.failed)
    # The names files really got (a taken name gets " (2)"; an earlier run's name is kept).
    saved = [(post, result.saved_as[post.file_url]) for post in found.posts if post.file_url in result.saved_as]
    _record_posts(folder / "posts.jsonl", saved)
    if chosen.write_tags:
        report.captions_written = _write_captions(project, saved)
    return report


def _record_posts(path, saved) -> None:
    """One line per post (id, md5, source, tags...), merged with what earlier runs recorded."""
    records: dict[str, dict] = {}
    try:
        earlier = parse_json_lines(path.read_bytes())  # NUL padding, torn lines and stray bytes are skipped
    except (FileNotFoundError, IsADirectoryError):
        earlier = []
    for entry in earlier:
        if isinstance(entry.get("md5"), str):
            records[entry["md5"]] = entry
    for post, filename in saved:
        records[post.md5] = {"site": post.site, "id": post.id, "md5": post.md5, "source": post.source, "rating": post.rating, "score": post.score, "tags": post.tags, "post_url": post.post_url, "file": filename}
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records.values()))


def _write_captions(project: Project, saved) -> int:
    """Booru tags as captions, only where an image has none yet: a tagged caption is never replaced."""
    written = 0
    for post, filename in saved:
        image = project.dataset_dir / filename
        caption = image.with_suffix(".txt")
        if image.exists() and not caption.exists():
            atomic_write_text(caption, caption_from_tags(post.tags))
            written += 1
    return written
