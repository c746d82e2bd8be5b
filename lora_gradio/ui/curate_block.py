"""Dataset step 4: curate the tags (activation tag, remove, search and replace, sort, dedupe, undo)
and look at them (top tags as a table and a bar chart), as the guide's notebook cell does."""

from __future__ import annotations

from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.common import escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr

TOP_HEADERS = ["tag", "images", "share"]
WATCH_SECONDS = 2.0
_BAR = "#f97316"


def tag_chart_html(rows: list[tuple[str, int]], files: int) -> str:
    """Horizontal bars, one per tag, scaled to the number of caption files (inline styles: the
    WebUI does not load our css)."""
    if not rows:
        return "<div id='lg-tag-chart'></div>"
    lines = []
    for tag, count in rows:
        width = 100.0 * count / max(files, 1)
        lines.append(
            "<div style='display:flex;align-items:center;gap:8px;margin:1px 0'>"
            f"<span style='flex:0 0 34%;text-align:right;overflow:hidden;text-overflow:ellipsis;white-space:nowrap' title='{escape(tag)}'>{escape(tag)}</span>"
            f"<div style='flex:1;background:rgba(128,128,128,.18);border-radius:3px;height:14px'><div style='width:{width:.1f}%;height:100%;background:{_BAR};border-radius:3px'></div></div>"
            f"<span style='flex:0 0 44px;font-variant-numeric:tabular-nums'>{count}</span></div>"
        )
    return f"<div id='lg-tag-chart' data-tags='{len(rows)}' style='font-size:0.85em;max-height:640px;overflow-y:auto'>{''.join(lines)}</div>"


def tag_overview(projects: Projects, project_name: "str | None", n: float):
    """(notes, table rows, chart html) for the top `n` tags of the project."""
    from lora_gradio.engine import tags

    project = open_project(projects, project_name)
    files = len(tags.caption_files(project))
    counts = tags.tag_counts(project)  # read once: the table, the chart and the total come from it
    rows = counts[: max(0, int(n or 50))]
    notes = [warn(escape(problem)) for problem in tags.caption_problems(project)]
    if files == 0:
        notes.insert(0, warn("No caption files yet: tag the images above first."))
    else:
        notes.insert(0, ok(f"{files} caption files, {len(counts)} different tags; the {len(rows)} most common:"))
    table = [[tag, count, f"{100 * count / files:.0f}%"] for tag, count in rows] or [["", 0, ""]]
    return "\n\n".join(notes), table, tag_chart_html(rows, files)


def undo_list_text(projects: Projects, project_name: "str | None") -> str:
    from lora_gradio.engine.tags import list_undo

    try:
        snapshots = list_undo(open_project(projects, project_name))
    except UserError:
        return ""
    if not snapshots:
        return "No tag edits to undo yet."
    shown = "\n".join(f"- {escape(s.summary())}" for s in snapshots[:5])
    return f"Edits that **Undo** takes back, newest first:\n{shown}"


def build_curate_block(blocks: "gr.Blocks", projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    with gr.Accordion("Curate the tags", open=False, elem_id="lg-curate"):
        gr.Markdown(
            "The guide's advice: pick an **activation tag** (a made-up word such as `my_character`) that is put first in every caption, "
            "and **remove the tags that describe what the LoRA should always draw** (hair colour, eye colour, the outfit of a character), "
            "so the activation tag absorbs them. Keep tags for what changes from image to image. All edits apply to every caption file "
            "in one step, and **Undo** takes the last one back."
        )
        with gr.Row():
            activation = gr.Textbox(label="Activation tag(s), put first", placeholder="my_character", elem_id="lg-curate-activation")
            remove = gr.Textbox(label="Remove these tags", placeholder="long hair, blue eyes, school uniform", elem_id="lg-curate-remove")
        with gr.Row():
            search = gr.Textbox(label="Search for tags", placeholder="serafuku, sailor collar", elem_id="lg-curate-search")
            replace = gr.Textbox(label="Replace them with (empty: just remove)", placeholder="my_outfit", elem_id="lg-curate-replace")
            mode = gr.Radio(["OR", "AND"], value="OR", label="Files with", info="OR: any of the tags; AND: all of them")
            new_as_activation = gr.Checkbox(value=False, label="Replacements become activation tags (put first)")
        with gr.Row():
            sort = gr.Checkbox(value=False, label="Sort tags alphabetically", elem_id="lg-curate-sort")
            dedupe = gr.Checkbox(value=False, label="Remove repeated tags", elem_id="lg-curate-dedupe")
            apply = gr.Button("Apply to all captions", variant="primary", elem_id="lg-curate-apply")
            undo = gr.Button("Undo last edit", elem_id="lg-curate-undo")
            # When captions changed since the edit, Undo refuses; this undoes anyway after saving them as an undo step.
            undo_force = gr.Button("Undo anyway (keeps the changed captions as an undo step)", elem_id="lg-curate-undo-force", size="sm")
        message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-curate-message")
        undo_list = gr.Markdown(elem_id="lg-curate-undo-list")

        gr.Markdown("### Most common tags\nShown after tagging, as the guide recommends: tags in almost every image are candidates to remove (or to fold into the activation tag).")
        with gr.Row():
            top_n = gr.Number(value=50, precision=0, label="How many", minimum=1, elem_id="lg-top-n")
            show = gr.Button("Show top tags", elem_id="lg-top-show")
        overview_notes = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-top-notes")
        with gr.Row():
            with gr.Column(scale=3):
                chart = gr.HTML(tag_chart_html([], 0), elem_id="lg-top-chart")
            with gr.Column(scale=2):
                table = gr.Dataframe(headers=TOP_HEADERS, value=[["", 0, ""]], interactive=False, elem_id="lg-top-table")

    overview_outputs = [overview_notes, table, chart]

    @shown_errors(3)
    def overview(project_name, n):
        return tag_overview(projects, project_name, n)

    @shown_errors(5)
    def do_apply(project_name, act, rem, found, wanted, mode_value, new_act, sort_value, dedupe_value, n):
        from lora_gradio.engine.tags import curate

        project = open_project(projects, project_name)
        report = curate(project, activation=act or "", remove=rem or "", search=found or "", replace=wanted or "", mode=mode_value,
                        new_as_activation=bool(new_act), sort=bool(sort_value), dedupe=bool(dedupe_value))
        text = report.summary()
        if found:
            text += f" The search matched {report.matched} file(s)."
        return (ok(escape(text)), undo_list_text(projects, project_name), *tag_overview(projects, project_name, n))

    def undo_handler(force: bool):
        @shown_errors(5)
        def do_undo(project_name, n):
            from lora_gradio.engine.tags import undo as undo_last

            report = undo_last(open_project(projects, project_name), force=force)
            return (ok(escape(report.summary())), undo_list_text(projects, project_name), *tag_overview(projects, project_name, n))

        return do_undo

    def load_project(project_name, n):
        from lora_gradio.engine.tags import saved_activation

        try:
            project = open_project(projects, project_name)
        except UserError:
            return [gr.update()] * 5
        notes, rows, html = tag_overview(projects, project_name, n)
        return saved_activation(project), undo_list_text(projects, project_name), notes, rows, html

    def watch_tagging(project_name, memo):
        """Show the top tags when a tagging job ends (once per job; the first tick just refreshes)."""
        unchanged = [gr.update()] * 3
        try:
            job = jobs.latest_job(open_project(projects, project_name), "tag")
        except UserError:
            return unchanged
        if job is None or jobs.job_status(job).active or memo.get(project_name) == job.id:
            return unchanged
        memo[project_name] = job.id
        return tag_overview(projects, project_name, 50)

    show.click(overview, inputs=[project_dropdown, top_n], outputs=overview_outputs)
    apply.click(do_apply, inputs=[project_dropdown, activation, remove, search, replace, mode, new_as_activation, sort, dedupe, top_n],
                outputs=[message, undo_list, *overview_outputs])
    undo.click(undo_handler(False), inputs=[project_dropdown, top_n], outputs=[message, undo_list, *overview_outputs])
    undo_force.click(undo_handler(True), inputs=[project_dropdown, top_n], outputs=[message, undo_list, *overview_outputs])
    project_dropdown.change(load_project, inputs=[project_dropdown, top_n], outputs=[activation, undo_list, *overview_outputs])
    blocks.load(load_project, inputs=[project_dropdown, top_n], outputs=[activation, undo_list, *overview_outputs])
    compat.poll(blocks, watch_tagging, project_dropdown, overview_outputs, seconds=WATCH_SECONDS, memory=True)
