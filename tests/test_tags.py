import pytest

from lora_gradio.engine import tags as T
from lora_gradio.engine.errors import UserError


def put(project, name, text, image=True):
    path = project.dataset_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text, encoding="utf-8")
    if image:
        path.with_suffix(".png").write_bytes(b"png")
    return path


def text(project, name):
    return (project.dataset_dir / name).read_text(encoding="utf-8")


def snapshot_bytes(project):
    return {p: p.read_bytes() for p in sorted(project.dataset_dir.rglob("*")) if p.is_file()}


def no_temp_files(project):
    return not [p for p in project.root.rglob("*.tmp")]


# Pure edits ------------------------------------------------------------------------------------


def test_split_and_keys():
    assert T.split_tags(" a, b ,, c\n") == ["a", "b", "c"]
    assert T.tag_key("Long_Hair") == T.tag_key("long hair") == "long hair"
    assert T.tag_key("^_^") == "^_^" and T.tag_key("o_o") == "o_o" and T.tag_key(">_<") == ">_<"
    assert T.tag_key("hatsune_miku_\\(cosplay\\)") == "hatsune miku (cosplay)"


def test_put_first_order_and_underscores():
    assert T.put_first(["a", "my_char", "b", "x y"], ["x_y", "my char"]) == ["x_y", "my char", "a", "b"]


def test_replace_or_and():
    tags = ["1girl", "school uniform", "red eyes"]
    assert T.replace_in(tags, ["school_uniform", "serafuku"], ["uniform"], "OR") == (["1girl", "red eyes", "uniform"], True)
    assert T.replace_in(tags, ["school uniform", "serafuku"], ["uniform"], "AND") == (tags, False)
    assert T.replace_in(tags, ["school uniform", "red eyes"], [], "AND") == (["1girl"], True)


def test_replace_new_as_activation_and_kept_search_tag():
    tags = ["1girl", "outfit a", "smile"]
    out, hit = T.replace_in(tags, ["outfit a"], ["char_a", "outfit2"], new_as_activation=True)
    assert hit and out == ["char_a", "outfit2", "1girl", "smile"]
    # a replacement that was also searched goes back at the end (the notebook's rule)
    out, _ = T.replace_in(["smile", "outfit a", "z"], ["outfit a"], ["outfit a", "new"], new_as_activation=True)
    assert out == ["new", "smile", "z", "outfit a"]


def test_sort_dedupe_kaomoji():
    assert T.sorted_tags(["act", "c", "b_x", "a"], keep_first=1) == ["act", "a", "b_x", "c"]
    assert T.deduped(["a", "long_hair", "Long hair", "a", "^_^", "^ ^"]) == ["a", "long_hair", "^_^", "^ ^"]


# On a project ----------------------------------------------------------------------------------


@pytest.fixture
def dataset(project):
    put(project, "1.txt", "1girl, long_hair, smile\n")
    put(project, "2.txt", "long hair, solo, ^_^")
    put(project, "sub/3.txt", "smile, solo, school uniform")
    return project


def test_activation_and_summary(dataset):
    report = T.set_activation_tags(dataset, "my char, extra")
    assert text(dataset, "1.txt") == "my char, extra, 1girl, long_hair, smile\n"
    assert text(dataset, "2.txt") == "my char, extra, long hair, solo, ^_^"
    assert text(dataset, "sub/3.txt").startswith("my char, extra, smile")
    assert report.summary() == f"Changed 3 of 3 caption files (undo: tags {dataset.name} --undo)."
    again = T.set_activation_tags(dataset, "my char, extra")
    assert again.changed == [] and again.undo_id is None and len(T.list_undo(dataset)) == 1


def test_remove_and_search_replace(dataset):
    T.remove_tags(dataset, "long hair, ^ ^")
    assert text(dataset, "1.txt") == "1girl, smile\n"
    assert text(dataset, "2.txt") == "solo, ^_^"  # kaomoji does not match '^ ^'
    report = T.search_replace(dataset, "smile, solo", "happy", mode="AND")
    assert report.matched == 1 and report.changed == ["sub/3.txt"]
    assert text(dataset, "sub/3.txt") == "school uniform, happy"
    report = T.search_replace(dataset, "smile, solo", "", mode="OR")
    assert text(dataset, "1.txt") == "1girl\n" and text(dataset, "2.txt") == "^_^"
    report = T.search_replace(dataset, "school_uniform", "char b", new_as_activation=True)
    assert text(dataset, "sub/3.txt") == "char b, happy"


def test_sort_dedupe_curate(dataset):
    put(dataset, "4.txt", "z, a, Long_hair, a, long hair")
    T.dedupe_tags(dataset)
    assert text(dataset, "4.txt") == "z, a, Long_hair"
    T.sort_tags(dataset, keep_first=1)
    assert text(dataset, "4.txt") == "z, a, Long_hair"
    assert text(dataset, "2.txt") == "long hair, ^_^, solo"
    report = T.curate(dataset, activation="act", sort=True, remove="solo")
    assert text(dataset, "4.txt") == "act, a, Long_hair, z"
    assert text(dataset, "2.txt") == "act, ^_^, long hair"
    assert len(T.list_undo(dataset)) == 3 and report.undo_id == T.list_undo(dataset)[0].id


def test_undo_restores_bytes_and_stacks(dataset):
    put(dataset, "bom.txt", "\ufeffa, b\r\n".encode("utf-8"))
    original = snapshot_bytes(dataset)
    T.set_activation_tags(dataset, "act")
    after_first = snapshot_bytes(dataset)
    T.remove_tags(dataset, "smile")
    assert [s.operation for s in T.list_undo(dataset)] == ["remove smile", "activation tags act"]
    first = T.undo(dataset)
    assert first.restored and "remove smile" in first.summary()
    assert snapshot_bytes(dataset) == after_first
    T.undo(dataset)
    assert snapshot_bytes(dataset) == original
    with pytest.raises(UserError):
        T.undo(dataset)
    assert no_temp_files(dataset)


def test_bad_input(dataset, projects):
    with pytest.raises(UserError):
        T.set_activation_tags(dataset, " , ")
    with pytest.raises(UserError):
        T.search_replace(dataset, "a", mode="XOR")
    empty = projects.create("empty")
    with pytest.raises(UserError):
        T.remove_tags(empty, "a")
    assert T.tag_counts(empty) == []


def test_undecodable_is_skipped_and_reported(dataset):
    put(dataset, "bad.txt", b"caf\xe9, smile")
    report = T.remove_tags(dataset, "smile")
    assert (dataset.dataset_dir / "bad.txt").read_bytes() == b"caf\xe9, smile"
    assert len(report.skipped) == 1 and "bad.txt" in report.summary()
    assert T.read_tags(dataset.dataset_dir / "bad.txt") == ["caf\ufffd", "smile"]
    assert T.undecodable_captions(dataset) == [dataset.dataset_dir / "bad.txt"]


def test_counts_and_top(dataset):
    put(dataset, "5.txt", "smile, smile, long hair")
    counts = T.tag_counts(dataset)
    assert counts[:2] == [("long hair", 3), ("smile", 3)]
    assert dict(counts)["solo"] == 2 and dict(counts)["^_^"] == 1
    assert T.top_tags(dataset, 1) == [("long hair", 3)]


def test_problem_listings(project):
    put(project, "a.txt", "x")
    put(project, "orphan.txt", "y", image=False)
    put(project, "empty.txt", " , \n")
    put(project, "sub/untagged.txt", None)
    assert T.orphan_captions(project) == [project.dataset_dir / "orphan.txt"]
    assert T.empty_captions(project) == [project.dataset_dir / "empty.txt"]
    assert T.untagged_images(project) == [project.dataset_dir / "sub/untagged.png"]
    assert len(T.caption_files(project)) == 3


def test_image_caption_editor(project):
    put(project, "sub/untagged.txt", None)
    assert T.image_caption(project, "sub/untagged.png") == ""
    report = T.set_image_caption(project, "sub/untagged.png", "a, b ")
    assert report.changed == ["sub/untagged.txt"] and T.image_caption(project, "sub/untagged.png") == "a, b"
    assert T.set_image_caption(project, "sub/untagged.png", "a, b").changed == []
    T.set_image_caption(project, "sub/untagged.png", "c")
    T.undo(project)
    assert T.image_caption(project, "sub/untagged.png") == "a, b"
    T.undo(project)
    assert not (project.dataset_dir / "sub/untagged.txt").exists()
    for bad in ("../x.png", "/etc/passwd", "sub/untagged.txt", "missing.png"):
        with pytest.raises(UserError):
            T.image_caption(project, bad)
    assert no_temp_files(project)


def test_subfolder_project_shares_undo(projects, dataset):
    sub = projects.project(f"{dataset.name}/sub")
    T.set_activation_tags(sub, "only_sub")
    assert text(dataset, "sub/3.txt").startswith("only_sub, ")
    assert text(dataset, "1.txt") == "1girl, long_hair, smile\n"
    T.undo(dataset)
    assert text(dataset, "sub/3.txt") == "smile, solo, school uniform"


def test_cli_tags_activation_top_and_undo(tmp_path, capsys):
    from lora_gradio.cli import main as cli_main
    from lora_gradio.engine.project import Projects

    project = Projects(tmp_path).create("p")
    for name, caption in (("a", "1girl, smile"), ("b", "solo, 1girl")):
        (project.dataset_dir / f"{name}.png").write_bytes(b"png")
        (project.dataset_dir / f"{name}.txt").write_text(caption)
    root = str(tmp_path)
    assert cli_main(["--root", root, "tags", "p", "--activation", "my_char", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "Changed 2 of 2" in out and "2  my_char" in out and "2  1girl" in out
    assert (project.dataset_dir / "a.txt").read_text().startswith("my_char, ")
    assert cli_main(["--root", root, "tags", "p", "--undo"]) == 0
    assert (project.dataset_dir / "a.txt").read_text() == "1girl, smile"
    assert cli_main(["--root", root, "tags", "p", "--undo"]) == 2  # nothing left to undo


def test_activation_is_remembered_for_training_and_testing(dataset):
    assert T.saved_activation(dataset) == ""
    T.curate(dataset, remove="solo")
    assert T.saved_activation(dataset) == ""  # no activation tag in this edit
    T.curate(dataset, activation="my_char", sort=True)
    assert T.saved_activation(dataset) == "my_char"
    T.search_replace(dataset, "school uniform", "outfit_b", new_as_activation=True)
    assert T.saved_activation(dataset) == "outfit_b"
    T.search_replace(dataset, "no such tag", "other", new_as_activation=True)
    assert T.saved_activation(dataset) == "outfit_b"  # nothing matched: nothing new to remember
    T.set_activation_tags(dataset, "a, b")
    assert T.saved_activation(dataset) == "a, b"
    assert dataset.read_section("project")  # the other sections of the settings file are kept


def test_caption_problems_say_what_to_do(project):
    assert T.caption_problems(project) == []
    put(project, "a.txt", "x")
    assert T.caption_problems(project) == []
    put(project, "orphan.txt", "y", image=False)
    put(project, "empty.txt", "")
    put(project, "untagged.txt", None)
    put(project, "bad.txt", b"\xff\xfe")
    problems = T.caption_problems(project)
    assert len(problems) == 4
    assert problems[0].startswith("1 image(s) have no caption file (untagged.png)")
    assert any("empty.txt" in p and "overwrite" in p for p in problems)
    assert any("orphan.txt" in p for p in problems) and any("UTF-8" in p for p in problems)


def test_image_list_and_tag_filter(dataset):
    assert T.image_list(dataset) == ["1.png", "2.png", "sub/3.png"]
    assert T.image_list(dataset, "long_hair") == ["1.png", "2.png"]
    assert T.image_list(dataset, "smile, Solo") == ["sub/3.png"]
    assert T.image_list(dataset, "nothing like this") == []
