import pytest

from lora_gradio.engine.project import Projects


@pytest.fixture
def projects(tmp_path):
    return Projects(tmp_path / "Loras")


@pytest.fixture
def project(projects):
    return projects.create("testproj")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see whether the test failed (to print the app's log).
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# A tiny SDXL (tests/tiny_sdxl.py), built once per session: as a diffusers folder, and as
# single files in the original SAI layout: noise prediction, and the same weights marked as
# v-prediction by NoobAI's `v_pred` key (load either with config_dir=tiny_sdxl_dir).
@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from tests.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl_file(tiny_sdxl_dir, tmp_path_factory):
    from tests.tiny_sdxl import write_sdxl_single_file

    return write_sdxl_single_file(tiny_sdxl_dir, tmp_path_factory.mktemp("tiny_sdxl_file") / "tiny_sdxl.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl_vpred_file(tiny_sdxl_dir, tmp_path_factory):
    from tests.tiny_sdxl import write_sdxl_single_file

    target = tmp_path_factory.mktemp("tiny_sdxl_vpred_file") / "tiny_sdxl_vpred.safetensors"
    return write_sdxl_single_file(tiny_sdxl_dir, target, v_pred=True)


@pytest.fixture(scope="session")
def tiny_model_dir_sd(tmp_path_factory):
    """The tiny SD 1.x (tests/tiny_sd.py) as a diffusers folder, built once per session."""
    from tests.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "tiny")
