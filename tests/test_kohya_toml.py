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


# SDXL: the XL notebook's files and kohya's sdxl_train_network.py --------------------------------

# What hollowstrawberry's Lora_Trainer_XL writes (toml.dumps of its config dicts) for its defaults: Illustrious XL 0.1,
# 10 images x 2 repeats / batch 4 = 5 steps x 10 epochs = 50 steps, so int(50 x 5%) = 2 warmup steps.
XL_TRAINING = """\
[network_arguments]
unet_lr = 0.0003
text_encoder_lr = 6e-5
network_dim = 8
network_alpha = 4
network_module = "networks.lora"
network_train_unet_only = false

[optimizer_arguments]
learning_rate = 0.0003
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 2
optimizer_type = "AdamW8bit"
optimizer_args = [ "weight_decay=0.1", "betas=[0.9,0.99]",]
loss_type = "l2"
max_grad_norm = 1.0

[training_arguments]
lowram = true
pretrained_model_name_or_path = "/content/Illustrious-XL-v0.1.safetensors"
vae = "/content/sdxl_vae.safetensors"
max_train_epochs = 10
train_batch_size = 4
seed = 42
max_token_length = 225
xformers = false
sdpa = true
min_snr_gamma = 8.0
no_half_vae = true
gradient_checkpointing = true
gradient_accumulation_steps = 1
max_data_loader_n_workers = 1
persistent_data_loader_workers = true
mixed_precision = "fp16"
full_fp16 = true
full_bf16 = false
cache_latents = true
cache_latents_to_disk = true
cache_text_encoder_outputs = false
min_timestep = 0
max_timestep = 1000
prior_loss_weight = 1.0
multires_noise_iterations = 6
multires_noise_discount = 0.3

[saving_arguments]
save_precision = "fp16"
save_model_as = "safetensors"
save_every_n_epochs = 1
save_last_n_epochs = 10
output_name = "char"
output_dir = "/content/drive/MyDrive/Loras/char/output"
log_prefix = "char"
logging_dir = "/content/drive/MyDrive/Loras/_logs"
"""

# With "NoobAI V-Pred 1.0" the notebook downloads that file and sets its three v-prediction keys.
XL_VPRED_TRAINING = XL_TRAINING.replace("Illustrious-XL-v0.1.safetensors", "NoobAI-XL-Vpred-v1.0.safetensors").replace(
    "multires_noise_discount = 0.3\n",
    "multires_noise_discount = 0.3\nv_parameterization = true\nscale_v_pred_loss_like_noise_pred = true\nzero_terminal_snr = true\n",
)

XL_DATASET = """\
[general]
resolution = 1024
shuffle_caption = true
keep_tokens = 1
flip_aug = false
caption_extension = ".txt"
enable_bucket = true
bucket_no_upscale = false
bucket_reso_steps = 64
min_bucket_reso = 256
max_bucket_reso = 4096

[[datasets]]
[[datasets.subsets]]
num_repeats = 2
image_dir = "/content/drive/MyDrive/Loras/char/dataset"
"""


def test_import_the_xl_notebooks_files(tmp_path):
    project = make_project(tmp_path)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", XL_TRAINING, XL_DATASET), project=project)
    # The XL notebook's defaults are this tool's for an SDXL base, but it always turns gradient checkpointing on.
    assert settings == settings_with("training_model=illustrious", "gradient_checkpointing=true")
    assert (settings.mixed_precision, settings.multires_noise_iterations, settings.min_snr_gamma) == ("full_fp16", 6, 8.0)
    assert settings.v_pred is False and settings.ip_noise_gamma == 0 and settings.cache_text_encoder_outputs is False
    text = "\n".join(notes)
    assert "is the notebook's Illustrious XL 0.1 model: imported as the preset 'illustrious'" in text
    assert "vae = /content/sdxl_vae.safetensors is not needed here: the base model's own VAE is used" in text
    assert "lr_warmup_steps = 2 of 50 steps: lr_warmup_ratio = 0.05." in text
    assert "(lowram, xformers, sdpa, no_half_vae, max_data_loader_n_workers, persistent_data_loader_workers)" in text
    assert "SDXL base: took its defaults for scale_v_pred_loss true, zero_terminal_snr true" in text
    # What the notebook writes with kohya's own defaults, or this tool's fixed choices, needs no note.
    for key in ("gradient_accumulation_steps", "loss_type", "max_grad_norm", "min_timestep", "max_timestep", "full_bf16", "v_parameterization"):
        assert key not in text
    assert "mixed_precision = fp16 is imported as auto" not in text  # full fp16 stays full fp16


def test_import_the_xl_notebooks_v_pred_files(tmp_path):
    project = make_project(tmp_path)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", XL_VPRED_TRAINING, XL_DATASET), project=project)
    assert settings == settings_with("training_model=noobai_vpred", "v_pred=true", "gradient_checkpointing=true")
    assert settings.v_pred and settings.zero_terminal_snr and settings.scale_v_pred_loss
    text = "\n".join(notes)
    assert "imported as the preset 'noobai_vpred'" in text
    assert "v_parameterization = true is imported as v_pred = true (the NoobAI V-Pred 1.0 preset predicts v anyway)" in text
    assert "took its defaults" not in text  # the file sets all three


@pytest.mark.parametrize("file_name, preset", [
    ("NoobAI-XL-v1.1.safetensors", "noobai_eps"),
    ("ponyDiffusionV6XL.safetensors", "pony"),
    ("animagineXLV3.safetensors", "animagine"),
    ("sd_xl_base_1.0.safetensors", "sdxl"),
])
def test_the_xl_notebooks_model_files_become_presets(tmp_path, file_name, preset):
    project = make_project(tmp_path)
    training = XL_TRAINING.replace("Illustrious-XL-v0.1.safetensors", file_name)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", training, XL_DATASET), project=project)
    assert settings == settings_with(f"training_model={preset}", "gradient_checkpointing=true")


def test_v_pred_notes_and_the_v_pred_keys_on_their_own(tmp_path):
    project = make_project(tmp_path)
    # The v-pred preset without v_parameterization: kohya would train it as noise prediction, this tool does not.
    training = XL_TRAINING.replace("Illustrious-XL-v0.1.safetensors", "NoobAI-XL-Vpred-v1.0.safetensors")
    settings, notes = import_kohya(write_notebook_files(tmp_path / "a", training, XL_DATASET), project=project)
    assert settings.training_model == "noobai_vpred" and settings.v_pred is False
    assert (settings.zero_terminal_snr, settings.scale_v_pred_loss) == (False, False)  # kohya's defaults: it is v-pred here
    assert any("is a v-prediction model, but the file does not set v_parameterization = true" in note for note in notes)
    # v_parameterization on a model that does not say so itself (the notebook's "is v-pred" box for a custom model).
    training = XL_VPRED_TRAINING.replace("NoobAI-XL-Vpred-v1.0.safetensors", "my-vpred-model.safetensors")
    settings, notes = import_kohya(write_notebook_files(tmp_path / "b", training, XL_DATASET), project=project)
    assert settings.training_model == "/content/my-vpred-model.safetensors" and settings.v_pred
    assert settings.zero_terminal_snr and settings.scale_v_pred_loss
    assert not any("v_parameterization" in note for note in notes)
    # zero_terminal_snr without v-prediction: kohya applies it to an epsilon model, this tool does not.
    training = XL_TRAINING.replace("multires_noise_discount = 0.3\n", "multires_noise_discount = 0.3\nzero_terminal_snr = true\n")
    settings, notes = import_kohya(write_notebook_files(tmp_path / "c", training, XL_DATASET), project=project)
    assert settings.zero_terminal_snr and not settings.v_pred
    assert any("zero_terminal_snr = true without v_parameterization" in note for note in notes)


def test_import_of_the_xl_notebooks_other_choices(tmp_path):
    project = make_project(tmp_path)
    training = (
        XL_TRAINING.replace('mixed_precision = "fp16"\nfull_fp16 = true', 'mixed_precision = "bf16"\nfull_fp16 = false')
        .replace("full_bf16 = false", "full_bf16 = true")
        .replace("min_snr_gamma = 8.0\n", "min_snr_gamma = 8.0\nip_noise_gamma = 0.05\n")
        .replace("multires_noise_iterations = 6\nmultires_noise_discount = 0.3\n", "")
        .replace("cache_text_encoder_outputs = false", "cache_text_encoder_outputs = true")
        .replace("text_encoder_lr = 6e-5", "text_encoder_lr = 0").replace("network_train_unet_only = false", "network_train_unet_only = true")
        .replace('lr_scheduler = "cosine_with_restarts"\nlr_scheduler_num_cycles = 3\nlr_warmup_steps = 2\n', 'lr_scheduler = "cosine"\n'
                 'lr_scheduler_type = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"\n'
                 'lr_scheduler_args = [ "min_lr=1e-9", "gamma=0.9", "d=0.9",]\n')
        .replace('logging_dir = "/content/drive/MyDrive/Loras/_logs"', 'logging_dir = "/content/drive/MyDrive/Loras/_logs"\nwandb_api_key = "secret-key"\nlog_with = "wandb"')
    )
    dataset = XL_DATASET.replace("shuffle_caption = true", "shuffle_caption = false")
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", training, dataset), project=project)
    assert settings.mixed_precision == "full_bf16" and settings.ip_noise_gamma == 0.05
    assert settings.multires_noise_iterations == 0 and settings.multires_noise_discount == 0.3
    assert settings.cache_text_encoder_outputs and not settings.shuffle_tags and settings.text_encoder_lr == 0
    # The notebook's rex before it counts the steps (no first_cycle_max_steps, no warmup_steps): kohya runs the class, not cosine.
    assert settings.lr_scheduler == "rex" and settings.lr_warmup_ratio == 0
    text = "\n".join(notes)
    assert "lr_scheduler_args min_lr=1e-9, d=0.9 of RexAnnealingWarmRestarts are not used here" in text
    assert "wandb_api_key = *** has no equivalent here" in text and "secret-key" not in text


# The XL notebook's "Came" optimizer (recommended args) and "rex" scheduler, as its training_config.toml has them once
# it has counted the steps (calculate_rex_steps): 50 steps in lr_scheduler_number = 3 cycles of 50 // 3 = 16 steps,
# round(50 x 5%) // 3 = 0 warmup steps per cycle (so no warmup_steps); with lr_scheduler_number = 1, one 50-step cycle
# with round(2.5) = 2 warmup steps.
XL_CAME_REX = """\
lr_scheduler = "cosine"
lr_scheduler_type = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
lr_scheduler_args = [ "min_lr=1e-9", "gamma=0.9", "d=0.9", "first_cycle_max_steps=16",]
optimizer_type = "LoraEasyCustomOptimizer.came.CAME"
optimizer_args = [ "weight_decay=0.04",]
"""
XL_ADAMW_COSINE_WITH_RESTARTS = """\
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 2
optimizer_type = "AdamW8bit"
optimizer_args = [ "weight_decay=0.1", "betas=[0.9,0.99]",]
"""


def test_import_of_the_xl_notebooks_came_and_rex(tmp_path):
    project = make_project(tmp_path)
    assert XL_ADAMW_COSINE_WITH_RESTARTS in XL_TRAINING
    training = XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, XL_CAME_REX)
    settings, notes = import_kohya(write_notebook_files(tmp_path / "three", training, XL_DATASET), project=project)
    assert (settings.optimizer, settings.optimizer_args) == ("CAME", ["weight_decay=0.04"])
    assert (settings.lr_scheduler, settings.lr_warmup_ratio) == ("rex", 0)
    assert settings == settings_with("training_model=illustrious", "gradient_checkpointing=true", "optimizer=CAME",
                                     "optimizer_args=weight_decay=0.04", "lr_scheduler=rex", "lr_warmup_ratio=0")
    text = "\n".join(notes)
    assert "optimizer_type = LoraEasyCustomOptimizer.came.CAME is the XL notebook's CAME: imported as CAME" in text
    assert "RexAnnealingWarmRestarts restarts every 16 of the 50 steps (the XL notebook's lr_scheduler_number cycles, each peak 0.9 times the last)" in text
    assert "lr_scheduler_args min_lr=1e-9, d=0.9 of RexAnnealingWarmRestarts are not used here" in text
    for key in ("lr_scheduler_type", "lr_scheduler_args", "lr_scheduler ", "has no equivalent"):
        assert f"kohya key [optimizer_arguments] {key}" not in text and "has no equivalent" not in text
    # lr_scheduler_number = 1: one cycle of the whole run, its warmup steps become the ratio, gamma does nothing.
    one_cycle = XL_CAME_REX.replace('"first_cycle_max_steps=16",', '"first_cycle_max_steps=50", "warmup_steps=2",')
    settings, notes = import_kohya(write_notebook_files(tmp_path / "one", XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, one_cycle), XL_DATASET), project=project)
    assert (settings.optimizer, settings.lr_scheduler, settings.lr_warmup_ratio) == ("CAME", "rex", 0.05)
    text = "\n".join(notes)
    assert "lr_scheduler_args warmup_steps=2 of 50 steps: lr_warmup_ratio = 0.05." in text
    assert "restarts" not in text and "gamma" not in text and "min_lr=1e-9, d=0.9" in text


def test_import_of_other_came_and_rex_classes(tmp_path):
    project = make_project(tmp_path)
    lines = """\
lr_scheduler = "constant"
lr_scheduler_type = "pytorch_optimizer.REXScheduler"
lr_scheduler_args = [ "total_steps=50", "max_lr=0.0003",]
optimizer_type = "came_pytorch.CAME"
optimizer_args = [ "weight_decay=0.01", "eps=(1e-30, 1e-16)",]
"""
    settings, notes = import_kohya(write_notebook_files(tmp_path / "a", XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, lines), XL_DATASET), project=project)
    assert (settings.optimizer, settings.lr_scheduler, settings.lr_warmup_ratio) == ("CAME", "rex", 0)
    assert settings.optimizer_args == ["weight_decay=0.01", "eps1=1e-30", "eps2=1e-16"]
    text = "\n".join(notes)
    assert "(the came-pytorch package) is imported as CAME" in text and "lr_scheduler_args max_lr=0.0003 of REXScheduler are not used here" in text
    # kohya's own spelling of the class this tool runs needs no note; kohya refuses lr_warmup_steps beside lr_scheduler_type.
    lines = lines.replace("came_pytorch.CAME", "pytorch_optimizer.CAME").replace(', "eps=(1e-30, 1e-16)"', "") + "lr_warmup_steps = 5\n"
    settings, notes = import_kohya(write_notebook_files(tmp_path / "b", XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, lines), XL_DATASET), project=project)
    assert (settings.optimizer, settings.optimizer_args, settings.lr_warmup_ratio) == ("CAME", ["weight_decay=0.01"], 0)
    text = "\n".join(notes)
    assert "CAME" not in text and "lr_warmup_steps = 5 is ignored: kohya refuses it beside lr_scheduler_type" in text
    # Another scheduler class is not read: lr_scheduler is used, as before.
    lines = 'lr_scheduler = "cosine"\nlr_scheduler_type = "CosineAnnealingLR"\nlr_scheduler_args = [ "T_max=50",]\n'
    settings, notes = import_kohya(write_notebook_files(tmp_path / "c", XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, lines), XL_DATASET), project=project)
    assert settings.lr_scheduler == "cosine" and any("only REX (the XL notebook's rex) is read: lr_scheduler is used here" in note for note in notes)


def test_bad_rex_arguments_name_the_file_and_key(tmp_path):
    project = make_project(tmp_path)
    for bad in ('"d=high"', '"first_cycle_max_steps=0"', '"warmup_steps=2.5"'):
        training = XL_TRAINING.replace(XL_ADAMW_COSINE_WITH_RESTARTS, XL_CAME_REX.replace('"first_cycle_max_steps=16"', bad))
        with pytest.raises(UserError) as error:
            import_kohya(write_notebook_files(tmp_path / "drive", training, XL_DATASET), project=project)
        assert "lr_scheduler_args" in str(error.value) and bad.strip('"') in str(error.value)


XL_BAD_VALUES = [
    ('mixed_precision = "fp16"', 'mixed_precision = "bf16"', "full_fp16", 'needs mixed_precision = "fp16"'),
    ("full_bf16 = false", "full_bf16 = true", "full_bf16", "not both"),
    ("multires_noise_iterations = 6", "multires_noise_iterations = 40", "multires_noise_iterations", "16"),
    ("cache_text_encoder_outputs = false", 'cache_text_encoder_outputs = "yes"', "cache_text_encoder_outputs", "true or false"),
]


@pytest.mark.parametrize("old, new, key, advice", XL_BAD_VALUES, ids=[row[2] for row in XL_BAD_VALUES])
def test_bad_xl_values_name_the_file_and_key(tmp_path, old, new, key, advice):
    project = make_project(tmp_path)
    assert old in XL_TRAINING
    with pytest.raises(UserError) as error:
        import_kohya(write_notebook_files(tmp_path / "drive", XL_TRAINING.replace(old, new), XL_DATASET), project=project)
    message = str(error.value)
    assert "training_config.toml" in message and key in message and advice in message


SDXL_ROUND_TRIPS = {
    "illustrious": ["training_model=illustrious"],
    "noobai_vpred": ["training_model=noobai_vpred", "v_pred=true"],
    "noobai_eps": ["training_model=noobai_eps"],
    "pony": ["training_model=pony"],
    "animagine": ["training_model=animagine"],
    "sdxl": ["training_model=sdxl"],
    "vpred_without_ztsnr": ["training_model=noobai_vpred", "v_pred=true", "zero_terminal_snr=false", "scale_v_pred_loss=false"],
    "full_bf16_ip_noise": ["training_model=illustrious", "mixed_precision=full_bf16", "ip_noise_gamma=0.05", "multires_noise_iterations=0"],
    "mixed_bf16_multires": ["training_model=illustrious", "mixed_precision=bf16", "multires_noise_iterations=8", "multires_noise_discount=0.1"],
    "auto_no_precision": ["training_model=illustrious", "mixed_precision=auto"],
    "float": ["training_model=illustrious", "mixed_precision=no", "gradient_checkpointing=true"],
    "style_locon_prodigy": [
        "training_model=illustrious", "lora_type=LoCon", "network_dim=16", "network_alpha=16", "conv_dim=16", "conv_alpha=8",
        "optimizer=Prodigy", "unet_lr=0.75", "text_encoder_lr=0.75", "mixed_precision=bf16",
        "optimizer_args=decouple=True weight_decay=0.01 betas=[0.9,0.999] d_coef=2 use_bias_correction=True safeguard_warmup=True",
    ],
    "steps": ["training_model=illustrious", "preferred_unit=Steps", "how_many=2000", "lr_scheduler=constant"],
}


@pytest.mark.parametrize("overrides", list(SDXL_ROUND_TRIPS.values()), ids=list(SDXL_ROUND_TRIPS))
def test_sdxl_round_trip_gives_back_the_same_settings(tmp_path, overrides):
    project = make_project(tmp_path)
    settings = settings_with(*overrides)
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings


def test_sdxl_round_trip_into_an_sdxl_project_keeps_what_the_file_leaves_open(tmp_path):
    project = make_project(tmp_path)
    # Without v-prediction kohya's files do not carry zero_terminal_snr, nor clip_skip for SDXL: base's values stay.
    settings = settings_with("training_model=illustrious", "zero_terminal_snr=false", "clip_skip=1")
    training, dataset = export_kohya(project, settings, tmp_path / "kohya")
    imported, _ = import_kohya(training, dataset, project=project, base=settings)
    assert imported == settings


def test_round_trip_of_the_v_pred_preset_turns_v_pred_on(tmp_path):
    # noobai_vpred trains with v-prediction whatever v_pred says; kohya needs v_parameterization = true for it.
    project = make_project(tmp_path)
    # Choosing the preset turns v_pred on (config.offer_family_defaults) unless v_pred is set in the same change.
    settings = settings_with("training_model=noobai_vpred", "v_pred=false")
    assert settings.v_pred is False
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings.model_copy(update={"v_pred": True})


@pytest.mark.parametrize("overrides", [
    ["optimizer=CAME", "optimizer_args=weight_decay=0.04", "lr_scheduler=rex"],
    ["optimizer=CAME", "lr_scheduler=rex", "lr_warmup_ratio=0", "how_many=7"],
    ["training_model=illustrious", "optimizer=CAME", "optimizer_args=weight_decay=0.04", "lr_scheduler=rex", "lr_warmup_ratio=0.1"],
    ["training_model=illustrious", "lr_scheduler=rex", "preferred_unit=Steps", "how_many=1000", "lr_warmup_ratio=0.07"],
], ids=["sd_came_rex", "sd_rex_no_warmup", "sdxl_came_rex", "sdxl_rex_steps"])
def test_round_trip_of_came_and_rex(tmp_path, overrides):
    project = make_project(tmp_path)
    settings = settings_with(*overrides)
    imported, notes = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings
    assert not any("not used here" in note or "restarts" in note or "CAME" in note for note in notes)


def test_export_of_came_and_rex_writes_what_kohya_imports(tmp_path):
    project = make_project(tmp_path)  # 10 images x 10 repeats / batch 2 = 50 steps per epoch
    settings = settings_with("optimizer=CAME", "optimizer_args=weight_decay=0.04", "lr_scheduler=rex", "how_many=2", "lr_warmup_ratio=0.05")
    training, _ = export_kohya(project, settings, tmp_path / "kohya")
    text = training.read_text()
    optimizer = tomllib.loads(text)["optimizer_arguments"]
    assert optimizer["optimizer_type"] == "pytorch_optimizer.CAME" and optimizer["optimizer_args"] == ["weight_decay=0.04"]
    assert optimizer["lr_scheduler"] == "cosine"  # as the XL notebook writes it; kohya runs lr_scheduler_type instead
    assert optimizer["lr_scheduler_type"] == "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
    # One cycle of the 100 steps with the REX paper's curve down to 0 after round(100 x 5%) warmup steps: this tool's rex.
    assert optimizer["lr_scheduler_args"] == ["min_lr=0", "gamma=1.0", "d=0.5", "first_cycle_max_steps=100", "warmup_steps=5"]
    assert "lr_warmup_steps" not in optimizer and "lr_scheduler_num_cycles" not in optimizer  # kohya refuses warmup steps here
    header = text.split("\n\n")[0]
    assert header.startswith("# Run with kohya's sd-scripts: accelerate launch train_network.py")
    assert "pytorch_optimizer.CAME needs the pytorch-optimizer package" in header
    assert "LoraEasyCustomOptimizer package, not on PyPI: pip install" in header and "#subdirectory=custom_scheduler" in header
    # kohya imports the optimizer's dotted name: module, then class.
    module, _, name = optimizer["optimizer_type"].rpartition(".")
    assert getattr(pytest.importorskip(module), name).__name__ == "CAME"
    # Other settings write no comment about packages and no scheduler class.
    training, _ = export_kohya(project, settings_with("lr_scheduler=cosine"), tmp_path / "plain")
    text = training.read_text()
    assert "pip install" not in text and "lr_scheduler_type" not in text


def test_round_trip_with_cached_text_encoder_outputs_gives_what_trains(tmp_path):
    # Cached text encoder outputs win over shuffling and text-encoder training here; kohya refuses them together.
    project = make_project(tmp_path)
    settings = settings_with("training_model=illustrious", "cache_text_encoder_outputs=true")
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings.model_copy(update={"shuffle_tags": False, "text_encoder_lr": 0.0})
    data = _flat(tomllib.loads((tmp_path / "kohya" / "training_config.toml").read_text()))
    assert data["cache_text_encoder_outputs"] is True and data["network_train_unet_only"] is True
    assert tomllib.loads((tmp_path / "kohya" / "dataset_config.toml").read_text())["general"]["shuffle_caption"] is False


def test_export_of_an_sdxl_project_writes_what_sdxl_train_network_reads(tmp_path):
    project = make_project(tmp_path)
    settings = settings_with("training_model=illustrious")
    training, dataset = export_kohya(project, settings, tmp_path / "kohya")
    text = training.read_text()
    assert text.splitlines()[0] == f"# Run with kohya's sd-scripts: accelerate launch sdxl_train_network.py --config_file {training}"
    assert kohya.kohya_script(settings) == "sdxl_train_network.py" == kohya.kohya_script(settings, project)
    assert kohya.kohya_command(settings, training) == f"accelerate launch sdxl_train_network.py --config_file {training}"
    data = tomllib.loads(text)
    assert data["model_arguments"] == {"pretrained_model_name_or_path": str(project.root / "_models" / "Illustrious-XL-v0.1.safetensors")}
    args = _flat(data)
    assert "v2" not in args and "clip_skip" not in args  # sdxl_train_network.py refuses v2 and warns about clip_skip
    assert (args["mixed_precision"], args["full_fp16"], "full_bf16" in args) == ("fp16", True, False)
    assert (args["multires_noise_iterations"], args["multires_noise_discount"], args["min_snr_gamma"]) == (6, 0.3, 8.0)
    assert args["no_half_vae"] is True and args["optimizer_args"] == ["weight_decay=0.1", "betas=[0.9,0.99]"]
    for key in ("v_parameterization", "zero_terminal_snr", "scale_v_pred_loss_like_noise_pred", "ip_noise_gamma", "cache_text_encoder_outputs", "vae"):
        assert key not in args
    general = tomllib.loads(dataset.read_text())["general"]
    assert (general["resolution"], general["max_bucket_reso"]) == (1024, 4096)
    assert tomllib.loads(dataset.read_text())["datasets"][0]["subsets"][0]["num_repeats"] == 2

    vpred = settings_with("training_model=noobai_vpred", "mixed_precision=full_bf16", "ip_noise_gamma=0.1")
    args = _flat(tomllib.loads(export_kohya(project, vpred, tmp_path / "vpred")[0].read_text()))
    assert args["v_parameterization"] is args["zero_terminal_snr"] is args["scale_v_pred_loss_like_noise_pred"] is True
    assert (args["mixed_precision"], args["full_bf16"], args["ip_noise_gamma"]) == ("bf16", True, 0.1)


def test_export_of_an_sd_project_names_train_network(tmp_path):
    project = make_project(tmp_path)
    settings = TrainSettings()
    training, _ = export_kohya(project, settings, tmp_path / "kohya")
    assert training.read_text().startswith(f"# Run with kohya's sd-scripts: accelerate launch train_network.py --config_file {training}\n")
    assert kohya.kohya_script(settings) == "train_network.py"
    args = _flat(tomllib.loads(training.read_text()))
    assert args["v2"] is False and args["clip_skip"] == 2 and "no_half_vae" not in args and "full_fp16" not in args
    # A repo id may be either family until it is downloaded: the comment says so.
    text = export_kohya(project, settings_with("training_model=someone/model"), tmp_path / "repo")[0].read_text()
    assert "(sdxl_train_network.py instead if someone/model is an SDXL model)" in text


def test_export_finds_a_civitai_preset_under_civitais_name(tmp_path):
    project = make_project(tmp_path)
    downloaded = project.root / "_models" / "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"
    downloaded.parent.mkdir(parents=True)
    downloaded.write_bytes(b"not read")
    settings = settings_with("training_model=pony")
    assert kohya.kohya_model_location(project, settings) == str(downloaded)
    imported, _ = round_trip(project, settings, tmp_path / "kohya")
    assert imported == settings


def test_xl_training_file_alone_brings_the_sdxl_dataset_defaults(tmp_path):
    # Without its dataset file, an SD 1.5 project's dataset settings take SDXL's defaults where they were SD's, as choosing the model does.
    project = make_project(tmp_path)
    base = settings_with("num_repeats=5")
    settings, notes = import_kohya(write_notebook_files(tmp_path / "drive", XL_TRAINING, dataset=None), project=project, base=base)
    assert (settings.resolution, settings.max_bucket_reso, settings.num_repeats) == (1024, 4096, 5)
    assert any("Kept your values for num_repeats" in note for note in notes)


def test_sdxl_export_refuses_bucket_steps_kohya_refuses(tmp_path):
    project = make_project(tmp_path)
    with pytest.raises(UserError, match="bucket_reso_steps divisible by 32"):
        export_kohya(project, settings_with("training_model=illustrious", "bucket_reso_steps=48"), tmp_path / "kohya")
    assert not (tmp_path / "kohya").exists() or not any((tmp_path / "kohya").iterdir())


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
