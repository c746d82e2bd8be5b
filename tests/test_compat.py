import pytest

from lora_gradio.ui import compat


@pytest.fixture
def upload_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    folder = tmp_path / "gradio" / "abc123"
    folder.mkdir(parents=True)
    (folder / "pic.png").write_bytes(b"x")
    return folder


def test_raw_values_of_every_gradio_version(upload_dir):
    path = str(upload_dir / "pic.png")
    assert compat.uploaded_paths([{"path": path, "orig_name": "pic.png"}]) == [path]  # 4+
    assert compat.uploaded_paths([{"name": path, "is_file": True, "data": None}]) == [path]  # 3.41
    assert compat.uploaded_paths([{"data": "", "blob": {"name": path, "is_file": True}, "name": "pic.png"}]) == [path]  # 3.41 half-way
    assert compat.uploaded_paths(None) == []


def test_files_outside_the_upload_folder_are_refused(upload_dir, tmp_path):
    with pytest.raises(PermissionError):
        compat.uploaded_paths([{"path": "/etc/passwd"}])
    with pytest.raises(PermissionError):
        compat.uploaded_paths([{"path": str(upload_dir / ".." / ".." / "elsewhere.png")}])


def test_unfinished_upload_is_explained(upload_dir):
    with pytest.raises(ValueError, match="finished uploading"):
        compat.uploaded_paths([{"name": "pic.png", "data": "data:image/png;base64,AAAA"}])


def test_listener_is_the_event_method_and_names_the_version_when_there_is_none():
    from lora_gradio.ui import compat
    from lora_gradio.ui.compat import gr

    with gr.Blocks():
        number, button = gr.Number(), gr.Button()
        assert compat.listener(number, "blur") == number.blur  # Gradio 4.x's Number is covered by the Forge tests
        with pytest.raises(AttributeError, match=f"Gradio {gr.__version__}: Button has no 'blur' event"):
            compat.listener(button, "blur")
