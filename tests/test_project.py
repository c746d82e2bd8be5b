import os

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Layout, Projects, resolve_root, validate_name


def test_project_layout_matches_the_notebook(tmp_path):
    root = tmp_path / "Loras"
    p = Projects(root).create("mychar")
    assert p.dataset_dir == root / "mychar" / "dataset" and p.dataset_dir.is_dir()
    assert p.output_dir == root / "mychar" / "output" and p.output_dir.is_dir()
    assert p.config_dir == root / "mychar"
    assert p.log_dir == root / "_logs" and p.log_dir.is_dir()
    assert p.read_section("project")["layout"] == "project"
    assert p.settings_file.parent == p.config_dir


def test_category_layout_matches_the_notebook(tmp_path):
    root = tmp_path / "lora_training"
    p = Projects(root, "category").create("mychar")
    assert p.dataset_dir == root / "datasets" / "mychar" and p.dataset_dir.is_dir()
    assert p.output_dir == root / "output" / "mychar" and p.output_dir.is_dir()
    assert p.config_dir == root / "config" / "mychar" and p.settings_file.is_file()
    assert p.log_dir == root / "log" and p.log_dir.is_dir()


@pytest.mark.parametrize("layout", ["project", "category"])
def test_subfolder_name_is_a_dataset_subfolder_of_the_project(tmp_path, layout):
    projects = Projects(tmp_path, layout)
    base = projects.create("mychar")
    sub = projects.create("mychar/outfit2")
    assert sub.dataset_dir == base.dataset_dir / "outfit2"
    assert sub.config_dir == base.config_dir and sub.output_dir == base.output_dir
    assert projects.list() == ["mychar", "mychar/outfit2"]


def test_existing_drive_folder_opens_unchanged(tmp_path):
    # A folder made by the guide's notebook: no settings file of ours, just dataset/ with images.
    (tmp_path / "oldchar" / "dataset").mkdir(parents=True)
    (tmp_path / "oldchar" / "dataset" / "1.png").write_bytes(b"x")
    projects = Projects(tmp_path)
    assert projects.list() == ["oldchar"]
    p = projects.open("oldchar")
    assert p.dataset_dir == tmp_path / "oldchar" / "dataset"
    assert sorted(os.listdir(tmp_path / "oldchar")) == ["dataset"]  # opening writes nothing


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "empty"),
        ("my char", "spaces"),
        (" mychar", "spaces"),
        ("../evil", "'..'"),
        ("a/../b", "more than one '/'"),
        ("a/..", "'..'"),
        ("/etc/passwd", "looks like a path"),
        ("C:evil", "looks like a path"),
        ("~root", "looks like a path"),
        ("a\\b", "backslash"),
        ('my"char', "not allowed"),
        ("it's", "not allowed"),
        ("a/b/c", "more than one '/'"),
        ("a//b", "more than one '/'"),
        ("name\x00", "control"),
        ("tab\there", "spaces"),
        ("_logs", "reserved"),
        ("con", "reserved device"),
        ("trailingdot.", "not allowed"),
        ("x" * 81, "81 characters"),
        (".hidden", "not allowed"),
    ],
)
def test_bad_names_are_refused_with_a_reason(tmp_path, name, fragment):
    projects = Projects(tmp_path)
    with pytest.raises(UserError) as err:
        projects.create(name)
    assert fragment in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_category_layout_reserves_its_own_folders():
    with pytest.raises(UserError, match="reserved"):
        validate_name("datasets", Layout.CATEGORY)
    assert validate_name("datasets", Layout.PROJECT) == "datasets"


def test_unicode_names_are_fine():
    assert validate_name("初音ミク_v2") == "初音ミク_v2"


def test_creating_twice_is_refused_and_changes_nothing(projects):
    p = projects.create("twice")
    before = p.settings_file.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        projects.create("twice")
    assert p.settings_file.read_bytes() == before


def test_open_missing_project_suggests_the_other_layout(tmp_path):
    Projects(tmp_path, "category").create("catchar")
    with pytest.raises(UserError, match="--layout category"):
        Projects(tmp_path, "project").open("catchar")


def test_open_missing_project_lists_existing_ones(projects):
    projects.create("alpha")
    with pytest.raises(UserError, match="alpha"):
        projects.open("beta")


def test_unwritable_root_gives_a_clear_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        Projects(blocker / "Loras").create("x")
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_root_gives_a_clear_message(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            Projects(root).create("x")
    finally:
        root.chmod(0o755)


def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADIO_ROOT", str(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("LORA_GRADIO_ROOT")
    assert resolve_root(None).name == "Loras"


def test_settings_sections_are_kept_apart_and_written_atomically(project):
    project.write_section("train", {"unet_lr": 5e-4, "network_dim": 16, "unset": None})
    project.write_section("scrape", {"tags": "1girl -sex"})
    settings = project.read_settings()
    assert settings["train"] == {"unet_lr": 5e-4, "network_dim": 16}
    assert settings["scrape"] == {"tags": "1girl -sex"}
    assert settings["project"]["name"] == "testproj"
    assert not [p for p in project.config_dir.iterdir() if p.name.endswith(".tmp")]


def test_broken_settings_file_is_reported(project):
    project.settings_file.write_text("this is = = not toml")
    with pytest.raises(UserError, match="not valid TOML"):
        project.read_settings()


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(UserError, match="Unknown layout"):
        Projects(tmp_path, "flat")
