"""kohya's training_config.toml + dataset_config.toml: export, import, round trips, the notebook's own files, refusals."""

from __future__ import annotations

import sys
import textwrap

import pytest

from lora_gradio.cli import main as cli_main
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train import kohya, loop
from lora_gradio.engine.train.config import TrainSettings, apply_overrides, load_settings, resolved_min_snr_gamma, save_settings
from lora_gradio.engine.train.kohya import export_kohya, import_kohya, warmup_ratio_for
from tests.images_factory import make_image

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def make_project(tmp_path, folders=None, name="char"):
    """A project whose images are all 512x512 (one bucket), so the step counts are the guide's formula.

    `folders` maps a folder under the dataset folder ("" = the dataset folder itself) to its number of images.
    """
    project = Projects(tmp_path / "Loras").create(name)
    for folder, count in (folders if folders is not None else {"": 10}).items():
        for i in range(count):
            image = make_image(project.dataset_root / folder / f"{i}.png", size=(512, 512))
            image.with_suffix(".txt").write_text("char, 1girl, smile")
    return project


def settings_with(*overrides):
    return apply_overrides(TrainSettings(), list(overrides))


def round_trip(project, settings, folder):
    training, dataset = export_kohya(project, settings, folder)
    return import_kohya(training, dataset, project=project)


ROUND_TRIPS = {
    "defaults": [],
    "locon": ["lora_type=LoCon", "network_dim=32", "network_alpha=16", "conv_dim=16", "conv_alpha=8"],
    "loha": ["lora_type=LoHa", "network_dim=8", "network_alpha=4", "conv_dim=4", "conv_alpha=1"],
    "lokr": ["lora_type=LoKr", "conv_dim=4", "conv_alpha=2"],
    "ia3": ["lora_type=IA3"],
    "dora": ["lora_type=DoRA", "conv_dim=8", "conv_alpha=8"],
    "prodigy": [
        "optimizer=Prodigy", "unet_lr=1.0", "text_encoder_lr=0.5", "lr_scheduler=constant_with_warmup", "network_alpha=16",
        "optimizer_args=decouple=True weight_decay=0.01 betas=[0.9,0.999] d_coef=2 use_bias_correction=True safeguard_warmup=True",
    ],
    "dadaptation": ["optimizer=DAdaptation", "unet_lr=1.0", "text_encoder_lr=1.0", "lr_scheduler=constant"],
    "steps_polynomial": ["preferred_unit=Steps", "how_many=2000", "lr_scheduler=polynomial", "lr_scheduler_number=2", "lr_warmup_ratio=0.1"],
    "epochs_warmup_0.07": ["how_many=7", "lr_warmup_ratio=0.07", "lr_scheduler=cosine"],
    "no_warmup": ["lr_warmup_ratio=0", "lr_scheduler=linear"],
    "unet_only": ["text_encoder_lr=0"],
    "min_snr_off": ["min_snr_gamma=false"],
    "min_snr_number": ["min_snr_gamma=3.5"],
    "everything_else": [
        "resolution=768", "min_bucket_reso=320", "max_bucket_reso=1280", "bucket_reso_steps=32", "flip_aug=true",
        "shuffle_tags=false", "activation_tags=2", "caption_extension=.caption", "clip_skip=1", "max_token_length=75",
        "seed=7", "noise_offset=0.05", "save_every_n_epochs=0", "keep_only_last_n_epochs=0", "mixed_precision=bf16",
        "save_precision=float", "train_batch_size=4", "num_repeats=3", "output_name=my_lora", "cache_latents=false",
        "cache_latents_to_disk=false", "gradient_checkpointing=true", "prior_loss_weight=0.5", "weighted_captions=true",
        "sample_prompts=char, 1girl, smile | char, 1girl, from side", "sample_every_n_epochs=2", "training_model=someone/sd15-model",
    ],
}


@pytest.mark.parametrize("overrides", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_round_trip_gives_back_the_same_settings(tmp_path, overrides):
    project = make_project(tmp_path)
    settings = settings_with(*overrides)
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings


def test_round_trip_of_continue_from_lora_and_a_model_file(tmp_path):
    project = make_project(tmp_path)
    lora = tmp_path / "old" / "char-10.safetensors"
    model = tmp_path / "models" / "my_model.safetensors"
    for path in (lora, model):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not read")
    settings = settings_with(f"continue_from_lora={lora}", f"training_model={model}")
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings
    args = _flat(tomllib.loads((tmp_path / "kohya" / "training_config.toml").read_text()))
    assert args["network_weights"] == str(lora) and args["pretrained_model_name_or_path"] == str(model)


def test_round_trip_of_custom_dataset_with_a_regularization_folder(tmp_path):
    project = make_project(tmp_path, {"good": 6, "normal": 4, "reg": 5, "sub/deeper": 2})
    settings = settings_with(
        'custom_dataset=[{"folder": "good", "num_repeats": 3}, {"folder": "normal", "keep_tokens": 2, "flip_aug": true},'
        ' {"folder": "reg", "is_reg": true, "num_repeats": 1}, {"folder": "sub/deeper"}]',
        "num_repeats=5",
    )
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings
    subsets = tomllib.loads((tmp_path / "kohya" / "dataset_config.toml").read_text())["datasets"][0]["subsets"]
    assert subsets[2] == {"image_dir": str(project.dataset_root / "reg"), "num_repeats": 1, "is_reg": True}


def test_round_trip_of_the_main_folder_with_a_subfolder(tmp_path):
    project = make_project(tmp_path, {"": 6, "outfit2": 4})
    settings = settings_with("num_repeats=4")
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings and imported.custom_dataset == []
    subsets = tomllib.loads((tmp_path / "kohya" / "dataset_config.toml").read_text())["datasets"][0]["subsets"]
    assert [s["image_dir"] for s in subsets] == [str(project.dataset_dir), str(project.dataset_dir / "outfit2")]


def test_min_snr_gamma_true_is_the_papers_five(tmp_path):
    project = make_project(tmp_path)
    training, _ = export_kohya(project, settings_with("min_snr_gamma=true"), tmp_path / "kohya")
    assert _flat(tomllib.loads(training.read_text()))["min_snr_gamma"] == 5.0
    imported, _ = import_kohya(training, project=project)
    assert imported.min_snr_gamma is True
    numeric, _ = round_trip(project, settings_with("min_snr_gamma=5"), tmp_path / "kohya")
    assert resolved_min_snr_gamma(numeric) == 5.0


def test_export_writes_the_notebooks_sections_and_keys(tmp_path):
    project = make_project(tmp_path)
    settings = settings_with("lora_type=LoCon", "text_encoder_lr=0", "preferred_unit=Steps", "how_many=1000", "min_snr_gamma=false")
    training, dataset = export_kohya(project, settings, tmp_path / "kohya")
    data = tomllib.loads(training.read_text())
    assert list(data) == [
        "additional_network_arguments", "optimizer_arguments", "training_arguments", "model_arguments",
        "saving_arguments", "dreambooth_arguments", "dataset_arguments",
    ]
    network = data["additional_network_arguments"]
    assert network["network_module"] == "networks.lora" and network["network_args"] == ["conv_dim=8", "conv_alpha=4"]
    assert network["network_train_unet_only"] is True and network["text_encoder_lr"] == 0
    optimizer = data["optimizer_arguments"]
    assert optimizer["lr_warmup_steps"] == 50 and optimizer["lr_scheduler_num_cycles"] == 3 and optimizer["optimizer_type"] == "AdamW8bit"
    arguments = data["training_arguments"]
    assert arguments["max_train_steps"] == 1000 and "max_train_epochs" not in arguments and "min_snr_gamma" not in arguments
    assert arguments["output_dir"] == str(project.output_dir) and arguments["output_name"] == "char"
    assert data["model_arguments"]["pretrained_model_name_or_path"] == str(project.root / "_models" / "animefull-final-pruned-fp16.safetensors")
    assert data["dataset_arguments"]["dataset_config"] == str(dataset)
    text = dataset.read_text()
    assert "[[datasets]]" in text and "[[datasets.subsets]]" in text  # tables, as the notebook's template writes them
    general = tomllib.loads(text)["general"]
    assert general == {
        "resolution": 512, "shuffle_caption": True, "keep_tokens": 1, "flip_aug": False, "caption_extension": ".txt",
        "enable_bucket": True, "bucket_reso_steps": 64, "bucket_no_upscale": False, "min_bucket_reso": 256, "max_bucket_reso": 1024,
    }


def test_export_counts_warmup_steps_from_the_images_and_buckets(tmp_path):
    project = make_project(tmp_path, {"": 0})
    for i in range(5):  # 3 square and 2 tall images: two buckets of batch 2 -> 2 + 1 steps per repeat
        image = make_image(project.dataset_dir / f"{i}.png", size=(512, 512) if i < 3 else (384, 640))
        image.with_suffix(".txt").write_text("char")
    training, _ = export_kohya(project, settings_with("num_repeats=1", "how_many=100", "lr_warmup_ratio=0.1"), tmp_path / "kohya")
    # bucket 1: 3 images -> 2 steps, bucket 2: 2 images -> 1 step; 3 steps x 100 epochs = 300 (the guide's formula says 250)
    assert _flat(tomllib.loads(training.read_text()))["lr_warmup_steps"] == 30


def test_export_layouts_of_the_lycoris_types(tmp_path):
    project = make_project(tmp_path)
    expected = {
        "LoHa": ["conv_dim=8", "conv_alpha=4", "algo=loha"],
        "LoKr": ["conv_dim=8", "conv_alpha=4", "algo=lokr"],
        "IA3": ["conv_dim=8", "conv_alpha=4", "algo=ia3"],
        "DoRA": ["conv_dim=8", "conv_alpha=4", "algo=locon", "dora_wd=True"],
    }
    for lora_type, args in expected.items():
        training, _ = export_kohya(project, settings_with(f"lora_type={lora_type}"), tmp_path / lora_type)
        network = tomllib.loads(training.read_text())["additional_network_arguments"]
        assert (network["network_module"], network["network_args"]) == ("lycoris.kohya", args)


def test_export_of_an_empty_dataset_says_so_and_writes_nothing(tmp_path):
    project = make_project(tmp_path, {"": 0})
    with pytest.raises(UserError, match="lr_warmup_steps.*No images in"):
        export_kohya(project, TrainSettings(), tmp_path / "kohya")
    assert not (tmp_path / "kohya").exists() or not any((tmp_path / "kohya").iterdir())
    training, _ = export_kohya(project, settings_with("preferred_unit=Steps", "how_many=999"), tmp_path / "kohya")
    assert _flat(tomllib.loads(training.read_text()))["lr_warmup_steps"] == 50  # 49.95 rounded, as the scheduler counts it


# The files holostrawberry's Lora Trainer wrote (toml.dumps of its config dicts), on Colab.
NOTEBOOK_TRAINING = """\
[additional_network_arguments]
unet_lr = 0.0005
text_encoder_lr = 0.0001
network_dim = 16
network_alpha = 8
network_module = "networks.lora"

[optimizer_arguments]
learning_rate = 0.0005
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 25
optimizer_type = "AdamW8bit"

[training_arguments]
max_train_epochs = 10
save_every_n_epochs = 1
save_last_n_epochs = 10
train_batch_size = 2
clip_skip = 2
min_snr_gamma = 5.0
weighted_captions = false
seed = 42
max_token_length = 225
xformers = true
lowram = true
max_data_loader_n_workers = 8
persistent_data_loader_workers = true
save_precision = "fp16"
mixed_precision = "fp16"
output_dir = "/content/drive/MyDrive/Loras/char/output"
logging_dir = "/content/drive/MyDrive/Loras/_logs"
output_name = "char"
log_prefix = "char"

[model_arguments]
pretrained_model_name_or_path = "/content/animefull-final-pruned-fp16.safetensors"
v2 = false

[saving_arguments]
save_model_as = "safetensors"

[dreambooth_arguments]
prior_loss_weight = 1.0

[dataset_arguments]
cache_latents = true
"""

NOTEBOOK_GENERAL = """\
[general]
resolution = 512
shuffle_caption = true
keep_tokens = 1
flip_aug = false
caption_extension = ".txt"
enable_bucket = true
bucket_reso_steps = 64
bucket_no_upscale = false
min_bucket_reso = 256
max_bucket_reso = 1024
"""

NOTEBOOK_DATASET = """\
[[datasets]]

[[datasets.subsets]]
num_repeats = 10
image_dir = "/content/drive/MyDrive/Loras/char/dataset"

""" + NOTEBOOK_GENERAL


def write_notebook_files(folder, training=NOTEBOOK_TRAINING, dataset=NOTEBOOK_DATASET):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_config.toml").write_text(training)
    if dataset is not None:
        (folder / "dataset_config.toml").write_text(dataset)
    return folder / "training_config.toml"


def test_import_the_notebooks_files(tmp_path):
    project = make_project(tmp_path)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive"), project=project)
    # The notebook's defaults are the guide's, so they are this tool's; it did not cache latents to disk.
    assert settings == TrainSettings(cache_latents_to_disk=False)
    text = "\n".join(notes)
    assert "imported as the preset 'anime'" in text
    assert f"read as the project's {project.dataset_dir}" in text
    assert "lr_warmup_steps = 25 of 500 steps" in text
    assert "xformers, lowram, max_data_loader_n_workers, persistent_data_loader_workers" in text
    assert "output_dir = /content/drive/MyDrive/Loras/char/output is ignored" in text
    assert "mixed_precision = fp16 is imported as auto" in text


def test_import_the_notebooks_older_locon_prodigy_and_custom_dataset(tmp_path):
    project = make_project(tmp_path, {"good_images": 6, "normal_images": 4})
    training = NOTEBOOK_TRAINING.replace(
        'network_module = "networks.lora"',
        'network_module = "lycoris.kohya"\nnetwork_args = [ "conv_dim=8", "conv_alpha=1", "algo=lora", "disable_conv_cp=True",]\n'
        "network_train_unet_only = true",
    ).replace("text_encoder_lr = 0.0001", "text_encoder_lr = 0").replace(
        'optimizer_type = "AdamW8bit"',
        'optimizer_type = "Prodigy"\noptimizer_args = [ "decouple=True", "weight_decay=0.01", "betas=[0.9,0.999]", "d_coef=2",]',
    ).replace("unet_lr = 0.0005", "unet_lr = 0.5").replace("learning_rate = 0.0005", "learning_rate = 0.5").replace("lr_scheduler_num_cycles = 3\n", "")
    dataset = NOTEBOOK_GENERAL + textwrap.dedent("""
        [[datasets]]

        [[datasets.subsets]]
        image_dir = "/content/drive/MyDrive/Loras/char/dataset/good_images"
        num_repeats = 3

        [[datasets.subsets]]
        image_dir = "/content/drive/MyDrive/Loras/char/dataset/normal_images"
        num_repeats = 1
    """)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", training, dataset), project=project)
    assert (settings.lora_type, settings.conv_dim, settings.conv_alpha) == ("LoCon", 8, 1)
    assert settings.text_encoder_lr == 0 and settings.unet_lr == 0.5 and settings.optimizer == "Prodigy"
    assert settings.lr_scheduler_number == 1  # kohya's default number of cycles
    assert settings.optimizer_args == ["decouple=True", "weight_decay=0.01", "betas=[0.9,0.999]", "d_coef=2"]
    assert [entry.model_dump(exclude_none=True) for entry in settings.custom_dataset] == [
        {"folder": "good_images", "num_repeats": 3, "is_reg": False},
        {"folder": "normal_images", "num_repeats": 1, "is_reg": False},
    ]
    # 6 x 3 + 4 x 1 = 22 samples / batch 2 = 11 steps x 10 epochs = 110; 25 warmup steps of those
    assert settings.lr_warmup_ratio == pytest.approx(25 / 110, abs=0.005)
    text = "\n".join(notes)
    assert "network_args disable_conv_cp=True has no equivalent here" in text
    assert "algo=lora of LyCORIS trains the conv layers too" in text


def test_unknown_keys_are_reported_in_notes(tmp_path):
    project = make_project(tmp_path)
    training = NOTEBOOK_TRAINING + "\n[extra_arguments]\nfoo_bar = 3\nnetwork_dropout = 0.1\n"
    dataset = NOTEBOOK_DATASET.replace("num_repeats = 10", 'num_repeats = 10\ncolor_aug = true\nclass_tokens = "char"').replace(
        "enable_bucket = true", "enable_bucket = false"
    ) 
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", training, "mystery = 1\n" + dataset), project=project)
    text = "\n".join(notes)
    assert "kohya key [extra_arguments] foo_bar = 3 has no equivalent here, ignored." in text
    assert "network_dropout = 0.1 has no equivalent here, ignored (no dropout here)" in text
    assert "color_aug = true has no equivalent here" in text
    assert 'class_tokens = "char" has no equivalent here' in text
    assert "kohya key mystery = 1 in dataset_config.toml has no equivalent here" in text
    assert "enable_bucket = false is ignored: this tool always sorts images into aspect-ratio buckets" in text
    assert settings.num_repeats == 10


BAD_VALUES = [
    ('network_module = "networks.lora"', 'network_module = "networks.dylora"', "training_config.toml", "network_module", "networks.lora"),
    ('optimizer_type = "AdamW8bit"', 'optimizer_type = "SGDNesterov"', "training_config.toml", "optimizer_type", "Prodigy"),
    ("network_dim = 16", 'network_dim = "big"', "training_config.toml", "network_dim", "use a number"),
    ("network_dim = 16", "network_dim = 5000", "training_config.toml", "network_dim", "1..1024"),
    ("network_alpha = 8", "network_alpha = 0.5", "training_config.toml", "network_alpha", "whole number"),
    ('lr_scheduler = "cosine_with_restarts"', 'lr_scheduler = "adafactor"', "training_config.toml", "lr_scheduler", "cosine_with_restarts"),
    ("lr_warmup_steps = 25", "lr_warmup_steps = -1", "training_config.toml", "lr_warmup_steps", "whole number of steps"),
    ("seed = 42", "seed = true", "training_config.toml", "seed", "use a number"),
    ('mixed_precision = "fp16"', 'mixed_precision = "fp8"', "training_config.toml", "mixed_precision", "bf16"),
    ("clip_skip = 2", "clip_skip = 2\nnetwork_train_text_encoder_only = true", "training_config.toml", "network_train_text_encoder_only", "UNet"),
]


@pytest.mark.parametrize("old, new, file, key, advice", BAD_VALUES, ids=[row[3] for row in BAD_VALUES])
def test_bad_training_values_name_the_file_and_key(tmp_path, old, new, file, key, advice):
    project = make_project(tmp_path)
    assert old in NOTEBOOK_TRAINING
    path = write_notebook_files(tmp_path / "drive", NOTEBOOK_TRAINING.replace(old, new))
    with pytest.raises(UserError) as error:
        import_kohya(path, project=project)
    message = str(error.value)
    assert file in message and key in message and advice in message and "\n" not in message


BAD_DATASETS = [
    ("resolution = 512", "resolution = [512, 768]", "square"),
    ("min_bucket_reso = 256", "min_bucket_reso = 640", "min_bucket_reso"),
    ("keep_tokens = 1", "keep_tokens = 40", "keep_tokens"),
    ('image_dir = "/content/drive/MyDrive/Loras/char/dataset"', 'image_dir = "/elsewhere/images"', "outside the project's dataset folder"),
    ('image_dir = "/content/drive/MyDrive/Loras/char/dataset"', 'metadata_file = "/x/meta.json"', "metadata_file"),
    ('image_dir = "/content/drive/MyDrive/Loras/char/dataset"',
     'image_dir = "/content/drive/MyDrive/Loras/char/dataset"\nresolution = 768\n\n[[datasets.subsets]]\nimage_dir = "/content/drive/MyDrive/Loras/char/dataset/b"',
     "the subsets disagree on resolution"),
    ("[[datasets.subsets]]\nnum_repeats = 10", "", "no [[datasets.subsets]]"),
]


@pytest.mark.parametrize("old, new, advice", BAD_DATASETS, ids=[row[2] for row in BAD_DATASETS])
def test_bad_dataset_values_name_the_file(tmp_path, old, new, advice):
    project = make_project(tmp_path)
    assert old in NOTEBOOK_DATASET
    path = write_notebook_files(tmp_path / "drive", dataset=NOTEBOOK_DATASET.replace(old, new))
    with pytest.raises(UserError) as error:
        import_kohya(path, project=project)
    assert "dataset_config.toml" in str(error.value) and advice in str(error.value)


def test_files_that_are_not_a_kohya_training_config_are_refused(tmp_path):
    folder = write_notebook_files(tmp_path / "drive").parent
    with pytest.raises(UserError, match="is kohya's dataset config: import the training_config.toml"):
        import_kohya(folder / "dataset_config.toml")
    ours = tmp_path / "ours.toml"
    ours.write_text("[train]\nnum_repeats = 3\n")
    with pytest.raises(UserError, match="is not a kohya training config"):
        import_kohya(ours)
    assert not kohya.is_kohya_file(ours) and kohya.is_kohya_file(folder / "training_config.toml")


def test_import_without_a_dataset_file_keeps_the_dataset_settings(tmp_path):
    project = make_project(tmp_path)
    base = settings_with("num_repeats=3", "resolution=640", "max_bucket_reso=1280")
    training = NOTEBOOK_TRAINING + "\n[extra]\nresolution = 768\n"
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", training, dataset=None), project=project, base=base)
    assert settings.num_repeats == 3 and settings.resolution == 768  # a dataset key in the training file still counts
    assert any("No dataset_config.toml found" in note for note in notes)


def test_warmup_ratio_from_steps():
    assert warmup_ratio_for(25, 500, 0.05) == 0.05
    assert warmup_ratio_for(50, 500, 0.05) == 0.1
    assert warmup_ratio_for(0, 4, 0.05) == 0.05  # 0.05 of 4 steps is 0 steps too: keep it
    assert warmup_ratio_for(10, 143, 0.05) == 0.07
    assert warmup_ratio_for(0, 500, 0.05) == 0.0


# Through the train command --------------------------------------------------------------------


def test_prepare_settings_reads_a_kohya_config_and_still_our_own(tmp_path):
    project = make_project(tmp_path)
    save_settings(project, settings_with("num_repeats=3", "sample_prompts=char, smile"))
    path = write_notebook_files(tmp_path / "drive", NOTEBOOK_TRAINING.replace("network_dim = 16", "network_dim = 24"))
    settings = loop.prepare_settings(project, config_file=str(path))
    assert settings.network_dim == 24 and settings.num_repeats == 10  # from the kohya files
    assert settings.sample_prompts == []  # kohya's file has none
    assert settings.force_steps is False and settings.cache_latents_to_disk is False
    ours = tmp_path / "ours.toml"
    ours.write_text("[train]\nnum_repeats = 4\n")
    assert loop.prepare_settings(project, config_file=str(ours)).num_repeats == 4
    with pytest.raises(UserError, match="network_module"):
        loop.prepare_settings(project, config_file=str(write_notebook_files(tmp_path / "bad", NOTEBOOK_TRAINING.replace("networks.lora", "networks.oft"))))


def test_cli_dry_run_with_a_kohya_config(tmp_path, capsys):
    project = make_project(tmp_path)
    path = write_notebook_files(tmp_path / "drive", NOTEBOOK_TRAINING.replace("max_train_epochs = 10", "max_train_epochs = 4"))
    code = cli_main(["--root", str(project.root), "train", "char", "--config", str(path), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "kohya import: pretrained_model_name_or_path" in err
    assert "10 images x 10 repeats x 4 epochs / 2 batch = 200 steps" in err and "Dry run" in out
    assert load_settings(project).how_many == 10  # a dry run saves nothing


def test_cli_export_kohya(tmp_path, capsys):
    project = make_project(tmp_path)
    save_settings(project, settings_with("lora_type=LoCon", "how_many=8"))
    code = cli_main(["--root", str(project.root), "train", "char", "--export-kohya", str(tmp_path / "out"), "--set", "num_repeats=4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split() == [str(tmp_path / "out" / "training_config.toml"), str(tmp_path / "out" / "dataset_config.toml")]
    assert "is not on this machine yet" in err  # the anime preset was never downloaded here
    imported, _ = import_kohya(tmp_path / "out" / "training_config.toml", project=project)
    assert imported == settings_with("lora_type=LoCon", "how_many=8", "num_repeats=4")
    assert load_settings(project).num_repeats == 10  # exporting trains nothing and saves nothing
    assert not list(project.output_dir.iterdir())


def _flat(data):
    return {key: value for section in data.values() for key, value in section.items()}
