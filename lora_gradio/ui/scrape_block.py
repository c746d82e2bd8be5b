"""Dataset step 1: gather images from a booru (search, look, then download as a job)."""

from __future__ import annotations

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from lora_gradio.ui.common import escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr

SITES = ["gelbooru", "safebooru", "danbooru"]


def _settings_from(values: dict):
    from lora_gradio.engine.scrape_run import ScrapeSettings
    from lora_gradio.engine.settings_model import validate

    values = {**values, "limit": int(values["limit"] or 1000), "max_resolution": int(values["max_resolution"] or 3072)}
    return validate(ScrapeSettings, values, where="")


def _credentials(api_key: str, user_id: str, login: str) -> "dict | None":
    given = {k: v.strip() for k, v in (("api_key", api_key), ("user_id", user_id), ("login", login)) if v and v.strip()}
    return given or None


def render_previews(found: dict) -> str:
    count = found["count"]
    shown = "an unknown number of" if count is None else f"{count:,}"
    images = "".join(
        f"<a href='{escape(p.post_url)}' target='_blank'><img src='{escape(p.preview_url)}' style='height:120px;width:auto;margin:0;border-radius:4px;display:block' loading='lazy'></a>"
        for p in found["previews"] if p.preview_url
    )
    return (
        f"<div id='lg-scrape-found'><b>{shown} posts</b> match. <a href='{escape(found['browser_url'])}' target='_blank'>See the same search on the site</a>."
        f"<div style='margin-top:6px;display:flex;flex-wrap:wrap;gap:4px'>{images}</div></div>"
    )


def build_scrape_block(projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    from lora_gradio.engine.scrape_run import ScrapeSettings
    from lora_gradio.engine.settings_model import field_infos

    defaults = ScrapeSettings()  # the settings model is the one source of defaults and help
    info = field_infos(ScrapeSettings)
    with gr.Accordion("Gather images from a booru", open=True):
        gr.Markdown("Search Gelbooru, Safebooru or Danbooru with tags as you would on the site, look at the result, then download. Running it again gets only what is missing.")
        with gr.Row():
            site = gr.Dropdown(SITES, value=defaults.site, label="Site", info=info["site"].description, elem_id="lg-scrape-site")
            tags = gr.Textbox(label="Tags", placeholder="1girl solo -sex -greyscale score:>10", info=info["tags"].description, elem_id="lg-scrape-tags")
            limit = gr.Number(value=defaults.limit, label="Up to (images)", precision=0, elem_id="lg-scrape-limit")
        with gr.Accordion("Options", open=False):
            with gr.Row():
                max_resolution = gr.Number(value=defaults.max_resolution, label="Max resolution", precision=0, info=info["max_resolution"].description)
                skip_parents = gr.Checkbox(value=defaults.skip_parents, label="Skip posts with a parent", info=info["skip_parents"].description)
                allow_webp = gr.Checkbox(value=defaults.allow_webp, label="Keep .webp too")
                write_tags = gr.Checkbox(value=defaults.write_tags, label="Booru tags as captions", info=info["write_tags"].description)
            base_url = gr.Textbox(label="Mirror address (optional)", placeholder="https://...", info=info["base_url"].description, elem_id="lg-scrape-mirror")
        with gr.Accordion("Login (Gelbooru: API key + user id; Danbooru: login + API key)", open=False):
            gr.Markdown("Gelbooru answers every search without an API key and user id with HTTP 401 since 2025. Both are on your account's options page: https://gelbooru.com/index.php?page=account&s=options")
            with gr.Row():
                api_key = gr.Textbox(label="API key", type="password", elem_id="lg-scrape-api-key")
                user_id = gr.Textbox(label="User id (Gelbooru)", elem_id="lg-scrape-user-id")
                login = gr.Textbox(label="Login (Danbooru)")
                remember = gr.Checkbox(label="Remember (stored readable only by you)")
        with gr.Row():
            search = gr.Button("Search", elem_id="lg-scrape-search")
            download = gr.Button("Download", variant="primary", elem_id="lg-scrape-download")
        found_html = gr.HTML(elem_id="lg-scrape-result")
        message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-scrape-message")

    inputs = [project_dropdown, site, tags, limit, max_resolution, skip_parents, allow_webp, write_tags, base_url, api_key, user_id, login, remember]

    def collect_inputs(project_name, site_v, tags_v, limit_v, maxres_v, parents_v, webp_v, write_v, base_v, key_v, uid_v, login_v, remember_v):
        settings = _settings_from({"site": site_v, "tags": tags_v or "", "limit": limit_v, "max_resolution": maxres_v, "skip_parents": parents_v, "allow_webp": webp_v, "write_tags": write_v, "base_url": base_v or ""})
        credentials = _credentials(key_v, uid_v, login_v)
        if credentials and remember_v:
            from lora_gradio.engine.scrape import save_credentials

            save_credentials(settings.site, **credentials)
        return open_project(projects, project_name), settings, credentials

    @shown_errors(2)
    def do_search(*values):
        from lora_gradio.engine.scrape_run import preview_search

        _, settings, credentials = collect_inputs(*values)
        return "", render_previews(preview_search(settings, credentials))

    @shown_errors(1)
    def do_download(*values):
        from lora_gradio.engine.scrape_run import credentials_env, save_scrape_settings
        from lora_gradio.engine.settings_model import to_dict

        project, settings, credentials = collect_inputs(*values)
        if not settings.tags.strip():
            return warn("Type some tags first, e.g. `1girl solo -sex`.")
        save_scrape_settings(project, settings)
        job = jobs.start_job(project, "scrape", "lora_gradio.engine.scrape_run:scrape_project", {"settings": to_dict(settings)}, title="Download images", secret_env=credentials_env(credentials))
        return ok(f"Downloading up to {settings.limit} images from {settings.site}; progress shows above (job `{job.id}`).")

    def load_saved(project_name):
        from lora_gradio.engine.errors import UserError
        from lora_gradio.engine.scrape_run import load_scrape_settings

        try:
            saved = load_scrape_settings(open_project(projects, project_name))
        except UserError:
            return [gr.update()] * 8
        return [saved.site, saved.tags, saved.limit, saved.max_resolution, saved.skip_parents, saved.allow_webp, saved.write_tags, saved.base_url]

    search.click(do_search, inputs=inputs, outputs=[message, found_html])
    download.click(do_download, inputs=inputs, outputs=[message])
    project_dropdown.change(load_saved, inputs=[project_dropdown], outputs=[site, tags, limit, max_resolution, skip_parents, allow_webp, write_tags, base_url])
