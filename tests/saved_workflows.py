"""The workflows as shipped before the encoded-reference nodes (commit 4d8d8d8: VAPWanConditioning /
VAPCogConditioning, each encoding its reference): saved graphs of users look like these and must still load and run.
Read from the repository's history (tests only run from a git checkout; without one the callers skip)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_AT = "4d8d8d8"
LONG_VIDEO_AT = "f947efd"  # the long-video workflow came later (last commit before the encoded-reference nodes)
NAMES = ["wan_vap_official", "wan_vap_lora_upscale", "cog_vap_official", "wan_vap_long_video"]


def saved(name: str, api: bool = True) -> dict:
    path = f"workflows/api/{name}.api.json" if api else f"workflows/{name}.json"
    try:
        commit = LONG_VIDEO_AT if name == "wan_vap_long_video" else SAVED_AT
        text = subprocess.run(["git", "-C", PACK, "show", f"{commit}:{path}"], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"the workflows saved at {SAVED_AT} come from git history, not available here ({err})")
    return json.loads(text)
