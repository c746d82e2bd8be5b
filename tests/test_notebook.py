"""The Colab notebook: valid, its Python compiles, and every command it runs is one the command line accepts."""

from __future__ import annotations

import ast
import json
import re
import shlex

from lora_gradio.cli import build_parser
from tests.appserver import REPO

NOTEBOOK = REPO / "notebooks" / "lora_gradio_colab.ipynb"
PARAM = re.compile(r"^(\w+) = (.+?)\s+#@param")


def _cells():
    data = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert data["nbformat"] == 4 and data["metadata"].get("accelerator") == "GPU"
    return [("".join(c["source"]), c["cell_type"]) for c in data["cells"]]


def _params() -> dict[str, str]:
    values = {"ROOT": "/content/drive/MyDrive/Loras", "login": "", "SOURCE": "x"}
    for source, kind in _cells():
        for line in source.splitlines():
            match = PARAM.match(line)
            if kind == "code" and match:
                values[match.group(1)] = str(ast.literal_eval(match.group(2)))
    return values


def test_python_in_every_cell_compiles():
    for source, kind in _cells():
        if kind != "code":
            continue
        # IPython's `!command` lines become a statement of the same indentation.
        python = "\n".join(re.sub(r"^(\s*)!.*$", r"\1pass", line) for line in source.splitlines())
        compile(python, "<cell>", "exec")


def test_every_command_is_accepted_by_the_command_line():
    values = _params()
    parser = build_parser()
    commands = []
    for source, kind in _cells():
        for line in source.splitlines():
            command = line.strip()
            if kind != "code" or not command.startswith("!lora-gradio"):
                continue
            command = command[1:].split("||")[0]
            command = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], command)
            args = shlex.split(command)[1:]
            if args == ["--version"]:
                continue
            parser.parse_args(args)  # exits (fails the test) on an unknown command or option
            commands.append(args[2] if args[0] == "--layout" else args[0])
    # One cell per stage of the guide, and a way to watch and resume a job.
    assert {"project", "dataset", "scrape", "dedupe", "tag", "tags", "train", "jobs", "compare"} <= set(commands)


def test_page_is_started_with_a_share_link_and_a_generated_password():
    page_cell = next(source for source, _ in _cells() if '"--share"' in source)
    assert '"--auth"' in page_cell and "secrets.token_urlsafe" in page_cell
    mount = next(source for source, _ in _cells() if "drive.mount" in source)
    assert "MyDrive/Loras" in mount and "MyDrive/lora_training" in mount  # both of the notebooks' layouts


def test_the_scrape_cell_logs_in_to_each_site_the_way_the_command_line_takes_it():
    """The cell builds the login options from the fields that are filled (Gelbooru: key and id;
    Danbooru: user name and key; Safebooru: none), and each result must parse."""
    cell = next(source for source, kind in _cells() if kind == "code" and " scrape " in source)
    python = "\n".join(line for line in cell.splitlines() if not line.strip().startswith("!"))
    command = next(line.strip()[1:] for line in cell.splitlines() if line.strip().startswith("!lora-gradio"))
    parser = build_parser()
    for fields, expected in (
        ({"API_KEY": "", "USER_ID": "", "LOGIN": ""}, {"api_key": None, "user_id": None, "login": None}),
        ({"API_KEY": "k3y", "USER_ID": "123", "LOGIN": ""}, {"api_key": "k3y", "user_id": "123", "login": None}),
        ({"API_KEY": "k3y", "USER_ID": " ", "LOGIN": "some name"}, {"api_key": "k3y", "user_id": None, "login": "some name"}),
    ):
        typed = [line for line in python.splitlines() if not (PARAM.match(line) and PARAM.match(line).group(1) in fields)]
        scope = dict(fields)  # what a person typed into the form, instead of the cell's defaults
        exec("\n".join(typed), scope)
        values = {**_params(), **fields, "login": scope["login"]}
        args = parser.parse_args(shlex.split(re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], command))[1:])
        assert {key: getattr(args, key) for key in expected} == expected, fields
