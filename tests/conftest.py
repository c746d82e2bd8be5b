import pytest

from lora_gradio.engine.project import Projects


@pytest.fixture
def projects(tmp_path):
    return Projects(tmp_path / "Loras")


@pytest.fixture
def project(projects):
    return projects.create("testproj")
