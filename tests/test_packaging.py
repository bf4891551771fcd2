"""What the registry ships is what runs: the zip ``comfy node pack`` (comfy-cli) makes from this checkout holds the
pack and its runner, not the tests, benchmarks or CI; ``comfy node validate`` passes. comfy-cli is found through
``COMFY_CLI`` (the ``comfy`` executable; .ci/run installs it in a venv of its own) or on PATH."""
from __future__ import annotations

import os
import shutil
import subprocess
import zipfile

import pytest

import host

PACK = host.PACK_DIR
COMFY = os.environ.get("COMFY_CLI") or shutil.which("comfy")
pytestmark = pytest.mark.skipif(not COMFY or not os.path.isfile(COMFY),
                                reason="comfy-cli not found (set COMFY_CLI to its 'comfy' executable, or pip install comfy-cli)")


def _comfy(args, cwd, home):
    env = {**os.environ, "HOME": str(home), "COMFY_NO_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    return subprocess.run([COMFY, "--skip-prompt", "--no-enable-telemetry", "node", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """This working tree as comfy-cli sees a repository (its tracked and not-ignored files) in a fresh git repo."""
    root = tmp_path_factory.mktemp("pack_checkout")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=PACK,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(PACK, rel)):
            os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
            shutil.copy2(os.path.join(PACK, rel), os.path.join(root, rel))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def test_pack_zip_ships_the_pack_not_the_tests(checkout, tmp_path):
    proc = _comfy(["pack"], checkout, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(os.path.join(checkout, "node.zip")) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"__init__.py", "nodes", "vap_core", "vap_headless", "workflows", "pyproject.toml", "requirements.txt",
            "README.md"} <= tops
    assert not tops & {"tests", "bench", ".ci"}, sorted(tops)
    assert "workflows/api/wan_vap_official.api.json" in names and "vap_headless/demo/standin_nodes/__init__.py" in names


def test_validate_passes(checkout, tmp_path):
    proc = _comfy(["validate"], checkout, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed" in proc.stdout + proc.stderr
