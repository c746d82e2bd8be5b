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
