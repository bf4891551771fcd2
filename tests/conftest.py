import pytest

import host  # tests/ and the repository root are on the path through pyproject's [tool.pytest.ini_options]


@pytest.fixture(scope="session")
def pack():
    """This pack imported against the real ComfyUI host (skips with the reason when there is none)."""
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    return host.import_host()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real ComfyUI server with this pack and tiny models (tests/e2e_server.py), shared by the e2e modules."""
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    import e2e_server
    yield from e2e_server.start(str(tmp_path_factory.mktemp("server_base")))


def pytest_report_header(config):
    return [f"ComfyUI host: {host.COMFYUI_PATH or 'NONE'} ({host.HOW_FOUND})",
            f"golden dir: {host.golden_dir() or 'NONE (set VAP_GOLDEN_DIR)'}"]
