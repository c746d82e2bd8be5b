"""The command line: every stage of the guide without the page, for notebook cells and scripts.

Bad input exits non-zero with one line that says what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import time
from typing import Any, Callable, Sequence

from lora_gradio import __version__
from lora_gradio.engine.errors import Cancelled, UserError

DESCRIPTION = "Make Stable Diffusion LoRAs following holostrawberry's guide: dataset, training, testing."


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--root/--layout are accepted before or after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--root", default=default, help="projects root (default: $LORA_GRADIO_ROOT or ~/Loras)")
    parser.add_argument(
        "--layout",
        default=default if suppress else "project",
        choices=["project", "category"],
        help="folder layout of the guide's notebooks: project = ROOT/NAME/dataset, category = ROOT/datasets/NAME (default: project)",
    )


def _whole_number(low: int, high: "int | None", what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else a message that gives the range."""

    def parse(text: str) -> int:
        shown = f"from {low} to {high}" if high is not None else f"of at least {low}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: use a {what} {shown}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: use a {what} {shown}")
        return value

    return parse


def _port(text: str) -> "int | None":
    """--port: 1 to 65535; 0 means what leaving it out means (the first free port from 7860)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use a port from 1 to 65535 (0: the first free one from 7860)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use a port from 1 to 65535 (0: the first free one from 7860)")
    return value or None


def _positive_number(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: use a {what} above 0") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use a {what} above 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-gradio", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"lora_gradio {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ui = sub.add_parser("ui", parents=[common], help="start the page (the default command)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the local network)")
    ui.add_argument("--port", type=_port, default=None, help="port, 1 to 65535 (default, or 0: the first free one from 7860)")
    ui.add_argument("--share", action="store_true", help="also make a public gradio.live link (use with --auth)")
    ui.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login on the page")
    ui.set_defaults(handler=cmd_ui)

    project = sub.add_parser("project", parents=[common], help="create, list and show projects")
    project_sub = project.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in (("create", "make the project's folders and settings file"), ("show", "print the project's folders")):
        p = project_sub.add_parser(action, parents=[common], help=help_text)
        p.add_argument("name", help="project name; NAME/SUB for a dataset subfolder")
        p.set_defaults(handler=cmd_project)
    project_sub.add_parser("list", parents=[common], help="list the projects under the root").set_defaults(handler=cmd_project)

    dataset = sub.add_parser("dataset", parents=[common], help="the guide's dataset extras: add (images, zips), count, check, convert, shrink, clean, trash")
    dataset_sub = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)

    def dataset_action(name: str, help_text: str, background: bool = True) -> argparse.ArgumentParser:
        p = dataset_sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("name", help="project name")
        if background:
            p.add_argument("--background", action="store_true", help="run as a background job and print its id (watch it with `jobs show NAME --follow`)")
        p.set_defaults(handler=cmd_dataset)
        return p

    dataset_action("count", "count images and captions per folder", background=False)
    dataset_action("check", "decode every image and list the unreadable ones")
    dataset_action("to-jpeg", "convert PNG images to JPEG (originals to the trash)").add_argument("--quality", type=_whole_number(1, 100, "JPEG quality"), default=95, help="JPEG quality (default 95)")
    dataset_action("shrink", "halve images over a size (originals to the trash)").add_argument("--max-mb", type=_positive_number("size in MB"), default=2.0, help="size limit in MB (default 2)")
    dataset_action("clean", "move files that are neither images nor captions to the trash")
    dataset_action("add", "copy images, caption files and zips into the dataset").add_argument("files", nargs="+", help="image, .txt or .zip files")
    dataset_action("trash", "list the trash batches", background=False)
    dataset_action("restore", "put a trash batch back", background=False).add_argument("batch", help="batch id from `dataset trash NAME`")

    scrape = sub.add_parser("scrape", parents=[common], help="download images from Gelbooru, Safebooru or Danbooru into the dataset")
    scrape.add_argument("name", help="project name")
    scrape.add_argument("--tags", help='tags as on the site, e.g. "1girl solo -sex score:>10" (default: the last search of this project)')
    scrape.add_argument("--site", choices=["gelbooru", "safebooru", "danbooru"], help="which booru (default: gelbooru, or this project's last)")
    scrape.add_argument("--limit", type=int, help="at most this many images (default 1000)")
    scrape.add_argument("--api-key", help="Gelbooru/Danbooru API key (Gelbooru: account options page)")
    scrape.add_argument("--user-id", help="Gelbooru numeric user id (account options page)")
    scrape.add_argument("--login", help="Danbooru user name")
    scrape.add_argument("--remember", action="store_true", help="store the key in your settings file (readable only by you) for later runs")
    scrape.add_argument("--base-url", help="another address for the site (a mirror)")
    scrape.add_argument("--max-resolution", type=int, help="use the sample image above this many pixels squared (default 3072)")
    scrape.add_argument("--no-parents", action="store_true", help="skip posts that have a parent post")
    scrape.add_argument("--webp", action="store_true", help="also keep .webp images")
    scrape.add_argument("--write-tags", action="store_true", help="write the booru tags as captions where there are none")
    scrape.add_argument("--yes", action="store_true", help="download without asking (needed when not run in a terminal)")
    scrape.add_argument("--background", action="store_true", help="run as a background job and print its id")
    scrape.set_defaults(handler=cmd_scrape)

    dedupe = sub.add_parser("dedupe", parents=[common], help="find exact and near-duplicate images; --apply moves the marked ones to the trash")
    dedupe.add_argument("name", help="project name")
    dedupe.add_argument("--threshold", type=float, default=0.985, help="CLIP cosine similarity for near-duplicates (guide: 0.97 to 0.99; default 0.985)")
    dedupe.add_argument("--model", default="openai/clip-vit-base-patch32", help="CLIP model: a Hugging Face repo id or a local folder")
    dedupe.add_argument("--apply", action="store_true", help="move the marked images (and their captions) to the project's trash")
    dedupe.add_argument("--apply-saved", action="store_true", help="move the marks of the last search (as edited on the page) to the trash, without searching again")
    dedupe.add_argument("--background", action="store_true", help="run the search as a background job and print its id")
    dedupe.set_defaults(handler=cmd_dedupe)

    tag = sub.add_parser("tag", parents=[common], help="tag images with the WD tagger (anime) or caption them with BLIP (photos)")
    tag.add_argument("name", help="project name")
    tag.add_argument("--method", choices=["wd", "blip"], default="wd", help="wd: booru tags (anime); blip: a sentence (photos)")
    tag.add_argument(
        "--preset", choices=["sd15", "sdxl"], default=None,
        help="WD: a named tagger choice; sd15 (default): the SD 1.5 guide's wd-swinv2-tagger-v3, threshold 0.35; "
        "sdxl: the SDXL Dataset Maker's two large v3 taggers (wd-eva02-large, then wd-vit-large adding only new tags), threshold 0.25, batch 8. "
        "--model, --threshold and --batch-size override it",
    )
    tag.add_argument("--model", nargs="+", default=None, metavar="ID_OR_DIR", help="model repo id(s) or folder(s); two WD models: the second adds only new tags (the notebook's way)")
    tag.add_argument("--threshold", type=float, default=None, help="WD: confidence for general tags (default: the preset's, 0.35 for sd15, 0.25 for sdxl)")
    tag.add_argument("--batch-size", type=int, default=None, help="WD: images per model call (default: the preset's; automatic for sd15, 8 for sdxl)")
    tag.add_argument("--character-threshold", type=float, default=None, help="WD: confidence for character names (off unless given; 0.85 is common)")
    tag.add_argument("--blacklist", default=None, help='WD: tags never written, e.g. "virtual youtuber, parody" (default: the notebook\'s list)')
    tag.add_argument("--rating", action="store_true", help="WD: add the rating tag first")
    tag.add_argument("--existing", choices=["skip", "append", "overwrite"], default="skip", help="images that already have a caption: skip them (default; also resumes a stopped run), add new tags, or replace")
    tag.add_argument("--background", action="store_true", help="run as a background job and print its id")
    tag.set_defaults(handler=cmd_tag)

    tags = sub.add_parser("tags", parents=[common], help="curate the caption tags: activation tag, remove, search and replace, sort, dedupe, undo, top tags")
    tags.add_argument("name", help="project name")
    tags.add_argument("--activation", default="", help='tag(s) to put first in every caption, e.g. "my_character"')
    tags.add_argument("--remove", default="", help='tags to remove from every caption, e.g. "solo, smile"')
    tags.add_argument("--search", default="", help="tags to look for (see --mode)")
    tags.add_argument("--replace", default="", help="tags that replace the searched ones (empty: just remove them)")
    tags.add_argument("--mode", choices=["OR", "AND"], default="OR", help="OR: captions with any searched tag; AND: with all of them")
    tags.add_argument("--new-as-activation", action="store_true", help="put the replacement tags first (they become activation tags)")
    tags.add_argument("--sort", action="store_true", help="sort the tags alphabetically (activation tags stay first)")
    tags.add_argument("--dedupe", action="store_true", help="remove tags repeated within a caption")
    tags.add_argument("--top", type=_whole_number(1, None, "count"), default=None, metavar="N", help="print the N most common tags (after the edits)")
    tags.add_argument("--undo", action="store_true", help="undo the last tag edit")
    tags.add_argument("--force", action="store_true", help="with --undo: undo even captions changed since that edit (their current versions are saved first, so this undo can be undone)")
    tags.set_defaults(handler=cmd_tags)

    train = sub.add_parser("train", parents=[common], help="train a LoRA with the guide's settings (saved in the project)")
    train.add_argument("name", nargs="?", help="project name")
    train.add_argument("--config", metavar="FILE.toml", help="settings file with this tool's keys (a [train] section or at the top level), or kohya's training_config.toml (its dataset_config.toml is read too)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="change one setting, e.g. --set num_repeats=5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run of this project where it stopped")
    train.add_argument("--dry-run", action="store_true", help="check the settings and the dataset and print the step plan, without training")
    train.add_argument("--background", action="store_true", help="run as a background job and print its id")
    train.add_argument("--help-settings", action="store_true", help="list every setting with its default, allowed values and the guide's advice")
    train.add_argument("--export-kohya", metavar="DIR", help="write the settings as kohya's training_config.toml and dataset_config.toml into DIR, without training")
    train.set_defaults(handler=cmd_train)

    compare = sub.add_parser("compare", parents=[common], help="compare the saved epochs and weights on an X/Y grid (or print the WebUI's X/Y/Z plot strings)")
    compare.add_argument("name", help="project name")
    compare.add_argument("--prompt", help="prompt (default: the activation tag plus the most common tags)")
    compare.add_argument("--negative", help="negative prompt")
    compare.add_argument("--epochs", help="which epochs: all, every2, last3, or numbers like 1,2,5 or 2-6 (default: all)")
    compare.add_argument("--weights", help="LoRA weights, e.g. 0.5,0.7,1 (default: 0.5 to 1 in steps of 0.1)")
    compare.add_argument("--seed", type=int, help="seed of the first image (-1: random; default 42)")
    compare.add_argument("--batch", type=int, help="images per cell (default 1)")
    compare.add_argument("--steps", type=int, help="sampling steps (default 20)")
    compare.add_argument("--cfg", type=float, help="CFG scale (default 7)")
    compare.add_argument("--width", type=int, help="image width (default: the training resolution)")
    compare.add_argument("--height", type=int, help="image height (default: the training resolution)")
    compare.add_argument("--no-base", action="store_true", help="leave out the 'no LoRA' column")
    compare.add_argument("--save-cells", action="store_true", help="also save every single image")
    compare.add_argument("--xyz", action="store_true", help="print the prompt and Prompt S/R values for the WebUI's X/Y/Z plot; render nothing")
    compare.add_argument("--webui", metavar="URL", help="render the grid in a running WebUI (started with --api), e.g. http://127.0.0.1:7860")
    compare.add_argument("--background", action="store_true", help="run as a background job and print its id")
    compare.set_defaults(handler=cmd_compare)

    jobs = sub.add_parser("jobs", parents=[common], help="list, watch and cancel background jobs")
    jobs_sub = jobs.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = jobs_sub.add_parser("list", parents=[common], help="the project's jobs, newest first")
    p.add_argument("name")
    for action, help_text in (("show", "state, progress and log of a job"), ("cancel", "ask a job to stop")):
        p = jobs_sub.add_parser(action, parents=[common], help=help_text)
        p.add_argument("name")
        p.add_argument("job", nargs="?", help="job id (default: the running or newest job)")
        if action == "show":
            p.add_argument("--follow", action="store_true", help="keep printing progress until the job ends")
        else:
            p.add_argument("--force", action="store_true", help="terminate the job if it has not stopped within 30 s")
    jobs.set_defaults(handler=cmd_jobs)
    for p in jobs_sub.choices.values():
        p.set_defaults(handler=cmd_jobs)
    return parser


# Handlers -----------------------------------------------------------------------------------------


def _projects(args: argparse.Namespace):
    from lora_gradio.engine.project import Projects

    return Projects(args.root, args.layout)


def cmd_ui(args: argparse.Namespace) -> int:
    from lora_gradio.ui.app import launch

    launch(args.root, args.layout, host=args.host, port=args.port, share=args.share, auth=args.auth)
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    projects = _projects(args)
    if args.action == "list":
        names = projects.list()
        print("\n".join(names) if names else f"No projects under {projects.root} yet: `lora-gradio project create NAME` makes one.")
        return 0
    project = projects.create(args.name) if args.action == "create" else projects.open(args.name)
    if args.action == "create":
        print(f"Created project {project.name!r}.")
    for label, path in (("dataset", project.dataset_dir), ("output", project.output_dir), ("settings", project.settings_file), ("logs", project.log_dir)):
        print(f"  {label:9}{path}")
    return 0


# `dataset` actions that run an engine function: action -> (job kind, function, title, kwargs from args)
DATASET_JOBS: dict[str, tuple[str, str, str, Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "check": ("check", "lora_gradio.engine.images:check_images", "Check images", lambda a: {}),
    "to-jpeg": ("convert", "lora_gradio.engine.images:convert_png_to_jpeg", "Convert PNG to JPEG", lambda a: {"quality": a.quality}),
    "shrink": ("shrink", "lora_gradio.engine.images:shrink_large_images", "Shrink large images", lambda a: {"max_megabytes": a.max_mb}),
    "clean": ("clean", "lora_gradio.engine.images:clean_dataset", "Clean the dataset folder", lambda a: {}),
    "add": ("import", "lora_gradio.engine.uploads:import_uploads", "Add files", lambda a: {"paths": [str(_existing_file(f)) for f in a.files]}),
}


def _existing_file(path: str) -> Path:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise UserError(f"{path} is not a file: give the path of an image, caption or .zip to add.")
    return p


def cmd_dataset(args: argparse.Namespace) -> int:
    project = _projects(args).open(args.name)
    if args.action == "count":
        return _print_counts(project)
    if args.action == "trash":
        from lora_gradio.engine.trash import list_trash

        batches = list_trash(project)
        if not batches:
            print("The trash is empty.")
        for b in batches:
            print(f"{b.id}  {len(b.pending):5d} file(s)  {b.reason}")
        return 0
    if args.action == "restore":
        from lora_gradio.engine.trash import restore

        restored = restore(project, args.batch)
        print(f"Restored {len(restored)} file(s).")
        return 0
    kind, func, title, kwargs_of = DATASET_JOBS[args.action]
    return run_engine_function(project, kind, func, title, kwargs_of(args), background=args.background)


def _print_counts(project) -> int:
    from lora_gradio.engine import images

    counts = images.count_dataset(project)
    print(f"{'folder':30} {'images':>7} {'captions':>9} {'no caption':>11} {'stray captions':>15} {'other':>6}")
    for c in counts:
        print(f"{c.label(project):30} {c.images:7d} {c.captions:9d} {c.images_without_caption:11d} {c.captions_without_image:15d} {c.other_files:6d}")
    for group in images.find_stem_clashes(project):
        print(f"warning: {' and '.join(p.name for p in group)} share a name and would share one caption file: convert or rename one.", file=sys.stderr)
    return 0


def run_engine_function(project, kind: str, func: str, title: str, kwargs: dict[str, Any], background: bool) -> int:
    """Run a long engine function here with progress on stderr, or as a detached job."""
    from lora_gradio.engine import jobs

    if background:
        job = jobs.start_job(project, kind, func, kwargs, title=title)
        print(job.id)
        print(f"Started {title} as job {job.id}: follow it with `lora-gradio jobs show {project.base} {job.id} --follow`.", file=sys.stderr)
        return 0
    from lora_gradio.engine.progress import PrintProgress

    fn = jobs.resolve_function(func)
    result = fn(project, **kwargs, progress=PrintProgress())
    if hasattr(result, "summary"):
        print(result.summary())
    elif result is not None:
        print(json.dumps(jobs.to_jsonable(result), indent=1))
    return _exit_code(result)


def _every_item_failed(result: Any) -> bool:
    """True when the work had items and not one of them succeeded (every image unreadable, every
    download failed): then the command must not exit 0, whatever the summary says."""
    from lora_gradio.engine.archive import AddReport
    from lora_gradio.engine.images import HygieneReport, Unreadable

    failed = getattr(result, "failed", None)
    if isinstance(result, Unreadable):  # dataset check
        return result.checked > 0 and len(result) == result.checked
    if isinstance(result, HygieneReport):  # to-jpeg, shrink, clean: every file it tried was skipped
        return bool(result.skipped) and not result.changed
    if isinstance(result, AddReport):  # dataset add: skips other than "already there" are failures
        return not result.added and any("already there" not in reason for _, reason in result.skipped)
    if failed:  # tag/caption (tagged), scrape (downloaded)
        return not any(getattr(result, name, None) for name in ("tagged", "downloaded"))
    unreadable = getattr(result, "unreadable", None)
    images = getattr(result, "images", None)
    if unreadable and images is not None:  # dedupe: every image unreadable
        return len(unreadable) >= len(images)
    if hasattr(result, "changed") and hasattr(result, "skipped") and hasattr(result, "total"):  # tag edits
        return bool(result.skipped) and not result.changed and len(result.skipped) >= result.total
    return False


def _exit_code(result: Any) -> int:
    if _every_item_failed(result):
        print("error: every item failed (see above): nothing was done.", file=sys.stderr)
        return 1
    return 0


def cmd_scrape(args: argparse.Namespace) -> int:
    from lora_gradio.engine import scrape_run
    from lora_gradio.engine.settings_model import to_dict, validate

    project = _projects(args).open(args.name)
    stored = to_dict(scrape_run.load_scrape_settings(project))
    given = {
        "tags": args.tags, "site": args.site, "limit": args.limit, "base_url": args.base_url, "max_resolution": args.max_resolution,
        "skip_parents": True if args.no_parents else None, "allow_webp": True if args.webp else None, "write_tags": True if args.write_tags else None,
    }
    settings = validate(scrape_run.ScrapeSettings, {**stored, **{k: v for k, v in given.items() if v is not None}}, where="scrape: ")
    credentials = {k: v for k, v in (("api_key", args.api_key), ("user_id", args.user_id), ("login", args.login)) if v} or None
    if args.remember and not credentials:
        raise UserError("--remember stores the credentials given with --api-key/--user-id/--login: give them too.")
    found = scrape_run.preview_search(settings, credentials)  # a wrong key or site fails here, before anything is saved
    count = found["count"]
    print(f"{settings.site}: {'an unknown number of' if count is None else f'{count:,}'} posts for '{settings.tags}' (see them: {found['browser_url']})", file=sys.stderr)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("Not asking in a script: add --yes to download.")
        answer = input(f"Download up to {settings.limit} of them into {project.dataset_dir}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing downloaded.", file=sys.stderr)
            return 0
    if credentials and args.remember:
        from lora_gradio.engine.scrape import save_credentials

        save_credentials(settings.site, **credentials)
        print(f"Saved the {settings.site} credentials in your settings file (readable only by you).", file=sys.stderr)
    kwargs = {"settings": to_dict(settings)}
    if args.background:
        from lora_gradio.engine import jobs

        job = jobs.start_job(project, "scrape", "lora_gradio.engine.scrape_run:scrape_project", kwargs, title="Download images", secret_env=scrape_run.credentials_env(credentials))
        scrape_run.save_scrape_settings(project, settings)  # after the job started: a refused start changes nothing
        print(job.id)
        print(f"Started the download as job {job.id}: follow it with `lora-gradio jobs show {project.base} {job.id} --follow`.", file=sys.stderr)
        return 0
    scrape_run.save_scrape_settings(project, settings)
    return run_engine_function(project, "scrape", "lora_gradio.engine.scrape_run:scrape_project", "Download images", {**kwargs, "credentials": credentials}, background=False)


def cmd_dedupe(args: argparse.Namespace) -> int:
    project = _projects(args).open(args.name)
    if not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold {args.threshold} is not a similarity: use a number from 0 to 1 (the guide: 0.97 to 0.99).")
    if args.background and (args.apply or args.apply_saved):
        raise UserError(f"--apply runs after the search, in this terminal: leave out --background, or run the search with --background "
                        f"and then `lora-gradio dedupe {project.base} --apply-saved`.")
    from lora_gradio.engine.dedupe import apply_marks, find_duplicates

    if args.apply_saved:
        print(apply_marks(project).summary())
        return 0
    kwargs = {"threshold": args.threshold, "model": args.model}
    if args.background:
        return run_engine_function(project, "dedupe", "lora_gradio.engine.dedupe:find_duplicates", "Find duplicates", kwargs, background=True)
    from lora_gradio.engine.progress import PrintProgress

    result = find_duplicates(project, **kwargs, progress=PrintProgress())
    for index, group in enumerate(result.groups, start=1):
        print(f"group {index}:")
        for rel in group:
            print(f"  {'remove' if rel in result.marked else 'keep  '}  {rel}")
    for rel, reason in result.unreadable:
        print(f"unreadable: {rel}: {reason}", file=sys.stderr)
    print(result.summary())
    if _every_item_failed(result):
        return _exit_code(result)  # nothing to apply: every image was unreadable
    if args.apply:
        print(apply_marks(project).summary())
    elif result.marked:
        print(f"Run again with --apply to move the {len(result.marked)} marked image(s) to the trash (restorable).")
    return 0


def tag_job_arguments(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(engine function, title, its arguments) of `tag`: the preset first, then --model/--threshold/--batch-size over it."""
    if args.method == "blip":
        if args.preset or args.batch_size is not None:
            raise UserError("--preset and --batch-size choose WD taggers: leave them out with --method blip.")
        kwargs: dict[str, Any] = {"existing": args.existing}
        if args.model:
            kwargs["model"] = args.model[0]
        return "lora_gradio.engine.tagger:caption_images", "Caption images (BLIP)", kwargs
    from lora_gradio.engine.tagger import DEFAULT_TAGGER_PRESET, tagger_preset

    kwargs = tagger_preset(args.preset or DEFAULT_TAGGER_PRESET).job_kwargs()
    kwargs.update({"character_threshold": args.character_threshold, "include_rating": args.rating, "existing": args.existing})
    if args.model:
        kwargs["models"] = args.model
    if args.threshold is not None:
        kwargs["general_threshold"] = args.threshold
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.blacklist is not None:
        kwargs["blacklist"] = args.blacklist
    return "lora_gradio.engine.tagger:tag_images", "Tag images (WD)", kwargs


def cmd_tag(args: argparse.Namespace) -> int:
    func, title, kwargs = tag_job_arguments(args)  # bad flags stop here, before the project or a model is touched
    project = _projects(args).open(args.name)
    code = run_engine_function(project, "tag", func, title, kwargs, background=args.background)
    if args.method == "wd" and not args.background:  # the guide: look at the top tags right after tagging
        print("Most common tags:")
        _print_tag_overview(project, 50)
    return code


def _print_tag_overview(project, n: int) -> None:
    """The top `n` tags on stdout, then what is wrong with the captions on stderr."""
    from lora_gradio.engine.tags import caption_problems, top_tags

    for tag_name, count in top_tags(project, n):
        print(f"{count:6d}  {tag_name}")
    for problem in caption_problems(project):
        print(f"warning: {problem}", file=sys.stderr)


def cmd_tags(args: argparse.Namespace) -> int:
    from lora_gradio.engine import tags as tag_edits

    project = _projects(args).open(args.name)
    if args.force and not args.undo:
        raise UserError("--force goes with --undo: lora-gradio tags NAME --undo --force.")
    if args.undo:
        print((tag_edits.undo(project, force=True) if args.force else tag_edits.undo(project)).summary())
        return 0
    if (args.new_as_activation or args.mode != "OR") and not args.search:
        raise UserError("--new-as-activation and --mode work on the tags of --search: give --search too.")
    edits = any([args.activation, args.remove, args.search, args.replace, args.sort, args.dedupe])
    code = 0
    if edits:
        report = tag_edits.curate(
            project, activation=args.activation, remove=args.remove, search=args.search, replace=args.replace,
            mode=args.mode, new_as_activation=args.new_as_activation, sort=args.sort, dedupe=args.dedupe,
        )
        print(report.summary())
        code = _exit_code(report)
    if args.top or not edits:
        _print_tag_overview(project, args.top or 50)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    if args.help_settings:
        from lora_gradio.engine.train.config import describe_settings

        print(describe_settings())
        return 0
    if not args.name:
        raise UserError("train needs a project name: lora-gradio train NAME (see --help).")
    project = _projects(args).open(args.name)
    from lora_gradio.engine.train.loop import prepare_settings

    if args.config and not args.resume:
        _print_kohya_notes(project, args.config)
    # Check the settings before a job starts or a model loads.
    settings = prepare_settings(project, config_file=args.config, overrides=args.overrides, resume=args.resume)
    if args.export_kohya:
        return _export_kohya(project, settings, args.export_kohya)
    config_file = str(Path(args.config).resolve()) if args.config else None
    kwargs = {"resume": args.resume, "dry_run": args.dry_run, "config_file": config_file, "overrides": args.overrides}
    if args.dry_run:
        return run_engine_function(project, "train", "lora_gradio.engine.train.loop:train_project", "Dry run", kwargs, background=False)
    if args.background:
        from lora_gradio.engine.train.loop import training_lock

        with training_lock(project):  # a run already going: refused here, not in a job that fails later
            pass
    return run_engine_function(project, "train", "lora_gradio.engine.train.loop:train_project", "Train LoRA", kwargs, background=args.background)


def _print_kohya_notes(project: Any, config: str) -> None:
    """What importing kohya's files changed or left out, before the run starts."""
    from lora_gradio.engine.train import kohya
    from lora_gradio.engine.train.config import load_settings

    if kohya.is_kohya_file(config):
        _, notes = kohya.import_kohya(config, project=project, base=load_settings(project))
        for note in notes:
            print(f"kohya import: {note}", file=sys.stderr)


def _export_kohya(project: Any, settings: Any, folder: str) -> int:
    from lora_gradio.engine.train import kohya

    paths = kohya.export_kohya(project, settings, folder)
    for path in paths:
        print(path)
    print(f"run: {kohya.kohya_command(settings, paths[0], project)}", file=sys.stderr)
    model = kohya.kohya_model_location(project, settings)
    if model.startswith(("http://", "https://")) or (Path(model).is_absolute() and not Path(model).exists()):
        print(f"note: the base model {model} is not on this machine yet; kohya's scripts need the file (training here once downloads it).", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lora_gradio.engine import compare

    project = _projects(args).open(args.name)
    overrides = {
        "prompt": args.prompt, "negative_prompt": args.negative, "epochs": args.epochs, "weights": args.weights, "seed": args.seed,
        "batch": args.batch, "steps": args.steps, "cfg_scale": args.cfg, "width": args.width, "height": args.height,
        "include_base": False if args.no_base else None, "save_cells": True if args.save_cells else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    compare.resolve_settings(project, overrides)  # bad values stop here, before a job starts or a model loads
    if args.xyz:
        print(compare.xyz_plan(project, **overrides).summary())
        return 0
    if args.webui:
        return run_engine_function(project, "compare", "lora_gradio.engine.compare:send_to_webui_job", "Compare in the WebUI", {"url": args.webui, **overrides}, background=args.background)
    return run_engine_function(project, "compare", "lora_gradio.engine.compare:compare_project", "Compare epochs", overrides, background=args.background)


def cmd_jobs(args: argparse.Namespace) -> int:
    from lora_gradio.engine import jobs

    project = _projects(args).open(args.name)
    if args.action == "list":
        listed = jobs.list_jobs(project)
        if not listed:
            print("No jobs in this project yet.")
        for job in listed:
            print(f"{job.id}  {jobs.job_status(job).headline()}")
        return 0
    job = jobs.get_job(project, args.job) if args.job else (jobs.active_job(project) or next(iter(jobs.list_jobs(project)), None))
    if job is None:
        raise UserError(f"No jobs in project {project.base!r} yet.")
    if args.action == "cancel":
        status = jobs.cancel_job(job, force_after_s=30 if args.force else None)
        print(status.headline() if not status.active else f"Asked {job.title} to stop; it finishes its current item first.")
        return 0
    status = jobs.job_status(job)
    if args.follow:
        last = ""
        while True:
            status = jobs.job_status(job)
            line = status.headline()
            if line != last:
                print(line, flush=True)
                last = line
            if not status.active:
                break
            time.sleep(1)
    else:
        print(status.headline())
        log = jobs.read_log(job, max_lines=30)
        if log:
            print(log)
    return 0 if status.state in (jobs.RUNNING, jobs.DONE) else 1


def _with_default_command(argv: list[str], commands: Sequence[str]) -> list[str]:
    """`lora-gradio --share` means `lora-gradio ui --share`: the page is the default command."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help", "--version") or token in commands:
            return argv
        if token in ("--root", "--layout", "--host", "--port", "--auth"):
            i += 2
            continue
        if not token.startswith("-"):
            return argv  # an unknown command: let argparse say so
        i += 1
    return ["ui", *argv]


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    args = parser.parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv), list(commands)))
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print("Cancelled: what was finished is kept.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nInterrupted: files already written are complete; nothing is half-written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
