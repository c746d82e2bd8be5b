"""Start the standalone page (`python -m lora_gradio`, `lora-gradio ui`)."""

from __future__ import annotations

import socket
import sys

from lora_gradio.engine.errors import UserError

SHARE_WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! WARNING: --share without --auth. ANYONE who gets the public link can upload and    !!
!! delete files in your projects and run jobs on this machine. Add --auth USER:PASS.  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def parse_auth(value: "str | None") -> "tuple[str, str] | None":
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth needs USER:PASS, with a user name and a password separated by ':' (e.g. --auth me:s3cret).")
    return user, password


def check_port_free(host: str, port: int) -> None:
    """Refuse early, with a clear line, instead of Gradio's long traceback."""
    bind_host = "0.0.0.0" if host in ("", "0.0.0.0") else host
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((bind_host, port))
        except OSError:
            raise UserError(f"Port {port} is already in use (another lora_gradio or the WebUI?): choose another with --port, e.g. --port {port + 1}.") from None


def launch(root=None, layout="project", host: str = "127.0.0.1", port: "int | None" = None, share: bool = False, auth: "str | None" = None, block: bool = True):
    """Build and serve the page; returns Gradio's launch result when `block` is False."""
    credentials = parse_auth(auth)
    if port is not None:
        check_port_free(host, port)
    from lora_gradio.engine.project import Projects
    from lora_gradio.ui import compat
    from lora_gradio.ui.page import build_page

    projects = Projects(root, layout)
    projects.check_root_writable()
    if share and credentials is None:
        print(SHARE_WARNING, file=sys.stderr, flush=True)
    blocks = build_page(projects.root, projects.layout)
    compat.enable_queue(blocks)
    return blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=credentials,
        inbrowser=False,
        prevent_thread_lock=not block,
        **compat.file_access(projects.root),
        **compat.launch_kwargs(),
    )
