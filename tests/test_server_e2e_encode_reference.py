"""The encoded-reference nodes in a REAL ComfyUI server (the session's server, tests/e2e_server.py, tiny models):

* changing only a prompt re-runs neither reference VAE encode: the Encode Reference node is served from ComfyUI's
  cache (the server's ``execution_cached`` list) and never executes, while the conditioning and the sampler do;
  a changed reference does re-run it (the check can fail);
* the workflows saved before these nodes (one-node VAPWanConditioning / VAPCogConditioning, from git history:
  tests/saved_workflows.py) still run, only file names, sizes and step counts changed.
"""
from __future__ import annotations

import numpy as np
import pytest

import e2e_server
import saved_workflows

pytestmark = [pytest.mark.server, pytest.mark.host]

W, H, N = 64, 48, 9
STEPS = 2


def _few_steps(ch, prompt):
    for class_type in ("KSampler", "BasicScheduler"):
        for node in ch.nodes_of(prompt, class_type):
            prompt[node]["inputs"]["steps"] = STEPS
    return prompt


@pytest.mark.parametrize("name, encode_class", [("wan_vap_official", "VAPWanEncodeReference"),
                                                ("cog_vap_official", "VAPCogEncodeReference")])
def test_a_prompt_change_reuses_the_reference_encode(server, name, encode_class):
    ch = server["ch"]
    prompt = _few_steps(ch, e2e_server.tiny(server, name))
    (encode,) = ch.nodes_of(prompt, encode_class)
    conditioning = ch.node_by_title(prompt, "VAP Wan Conditioning" if name.startswith("wan") else
                                    "VAP CogVideoX Conditioning")
    prompt[ch.node_by_title(prompt, "Prompt")]["inputs"]["text"] = f"first prompt of {name}"
    e2e_server.run_ok(server, prompt)

    for text in ("a second prompt", "a third prompt, longer than the second one"):
        prompt[ch.node_by_title(prompt, "Prompt")]["inputs"]["text"] = text
        again = e2e_server.run_ok(server, prompt)
        assert encode in again.cached and encode not in again.executed, (again.cached, again.executed)
        assert conditioning in again.executed and again.outputs, again.executed  # the new prompt did run

    # a changed reference (another frame selection seed: new loader output) encodes again
    loader = ch.node_by_title(prompt, "Reference video")
    prompt[loader]["inputs"]["frame_selection"] = "random"
    prompt[loader]["inputs"]["seed"] += 1
    changed = e2e_server.run_ok(server, prompt)
    assert encode in changed.executed and encode not in changed.cached


@pytest.mark.parametrize("name", saved_workflows.NAMES)
def test_workflow_saved_before_the_encoded_reference_nodes_runs(server, name, tmp_path):
    ch, assets = server["ch"], server["assets"]
    saved = saved_workflows.saved(name)
    assert {n["class_type"] for n in saved.values()} & {"VAPWanConditioning", "VAPCogConditioning"}
    prompt = _few_steps(ch, assets.tiny_prompt(saved))
    result = e2e_server.run_ok(server, prompt)
    video = e2e_server.video(server, result, tmp_path)
    scale = 2 if name == "wan_vap_lora_upscale" else 1
    assert video["frames"].shape == (N, H * scale, W * scale, 3)
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0
