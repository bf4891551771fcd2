"""The reference-guided workflows (VAP Reference Guider) run in a REAL ComfyUI server, end to end, with tiny models
(same session server as tests/test_server_e2e.py): only file names, sizes and the step count changed."""
from __future__ import annotations

import numpy as np
import pytest

import e2e_server

pytestmark = [pytest.mark.server, pytest.mark.host]

W, H, N = 64, 48, 9
STEPS = 2


@pytest.mark.parametrize("name", ["wan_vap_reference_guided", "cog_vap_reference_guided"])
def test_reference_guided_workflow_runs(server, name, tmp_path):
    ch = server["ch"]
    prompt = e2e_server.tiny(server, name)
    guider = ch.node_by_title(prompt, "VAP Reference Guider")
    assert prompt[guider]["class_type"] == "VAPReferenceGuider" and prompt[guider]["inputs"]["reference_scale"] != 0
    prompt[ch.node_by_title(prompt, "Scheduler")]["inputs"]["steps"] = STEPS
    log_start = len(server["server"].log_text())
    result = e2e_server.run_ok(server, prompt)
    sampler = ch.node_by_title(prompt, "Sampler")
    progress = [p for p in result.progress if p.get("node") == sampler]
    assert progress and progress[-1]["value"] == STEPS == progress[-1]["max"]
    video = e2e_server.video(server, result, tmp_path)
    assert video["frames"].shape == (N, H, W, 3)
    assert np.isfinite(video["frames"].astype(np.float32)).all()
    assert "Traceback" not in server["server"].log_text()[log_start:]
