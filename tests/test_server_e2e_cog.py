"""The shipped CogVideoX workflow through a REAL ComfyUI server, end to end, with one and two references.

Same session server as tests/test_server_e2e.py (fixture ``server``): tiny random CogVideoX base + expert
(converted from a tiny official-layout checkpoint), the real-layout CogVideoX VAE and a tiny T5 stand-in for
*Load CLIP* (type cogvideox). The workflow is submitted as shipped except file names, sizes (64x48, 9 frames)
and that loader; the two-reference run adds a second *Load VAP Reference Video* and caption.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import e2e_server

pytestmark = [pytest.mark.server, pytest.mark.host]

W, H, N = 64, 48, 9
WORKFLOW = "cog_vap_official"
SAMPLER = "18"        # SamplerCustomAdvanced
REFERENCE = "12"      # VAPLoadReferenceVideo
CAPTION = "8"         # reference caption (CLIPTextEncode)
CONDITIONING = "17"   # VAPCogConditioningFromReference
ENCODE = "32"         # VAPCogEncodeReference
STEPS = 50


def test_cog_nodes_are_loaded(server):
    info = server["client"].object_info()
    for node in ("VAPCogConditioning", "VAPCogEncodeReference", "VAPCogConditioningFromReference",
                 "VAPDynamicCFGGuider", "VOIDSampler", "VAPTestTinyT5Loader"):
        assert node in info, f"{node} not registered; server log:\n{server['server'].log_tail()}"


def _check_video(server, result, tmp_path):
    video = e2e_server.video(server, result, tmp_path)
    assert video["frames"].shape == (N, H, W, 3)
    assert (video["width"], video["height"], video["codec"], video["fps"]) == (W, H, "h264", 16.0)
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0
    return video


@pytest.fixture(scope="module")
def one_reference(server, tmp_path_factory):
    prompt = e2e_server.tiny(server, WORKFLOW)
    assert prompt[SAMPLER]["class_type"] == "SamplerCustomAdvanced"
    log_start = len(server["server"].log_text())  # the server is shared: only this run's log lines count
    result = e2e_server.run_ok(server, prompt)
    return {"prompt": prompt, "result": result, "log": server["server"].log_text()[log_start:],
            "video": _check_video(server, result, tmp_path_factory.mktemp("cog_one"))}


def test_official_cog_workflow_one_reference(server, one_reference):
    result = one_reference["result"]
    # the shipped 50 steps, reported step by step over the websocket by the sampler node
    progress = [p for p in result.progress if p.get("node") == SAMPLER]
    assert progress and all(p["max"] == STEPS for p in progress)
    assert [p["value"] for p in progress][-1] == STEPS
    assert "Traceback" not in one_reference["log"] and "Cannot import" not in server["server"].log_text()


def test_official_cog_workflow_two_references(server, one_reference, tmp_path):
    prompt = copy.deepcopy(one_reference["prompt"])
    second_video, second_caption, second_encode = "40", "41", "42"
    prompt[second_encode] = copy.deepcopy(prompt[ENCODE])
    prompt[second_encode]["inputs"]["reference_frames"] = [second_video, 0]
    prompt[second_video] = copy.deepcopy(prompt[REFERENCE])
    prompt[second_video]["inputs"]["frame_selection"] = "first"   # another clip of the same file
    prompt[second_video]["_meta"]["title"] = "Reference video 2"
    prompt[second_caption] = copy.deepcopy(prompt[CAPTION])
    prompt[second_caption]["inputs"]["text"] = "A second reference: a square slides to the right."
    prompt[second_caption]["_meta"]["title"] = "Reference caption 2"
    prompt[CONDITIONING]["inputs"].update(reference_2=[second_encode, 0], ref_positive_2=[second_caption, 0])
    result = e2e_server.run_ok(server, prompt)
    video = _check_video(server, result, tmp_path)
    assert CONDITIONING in result.executed and SAMPLER in result.executed and second_encode in result.executed
    assert ENCODE in result.cached  # the first reference's encode is served from the one-reference run
    # same seeds, one more reference: a different video
    assert not np.array_equal(video["frames"], one_reference["video"]["frames"])


@pytest.mark.parametrize("case", ["length", "wan_vae"])
def test_bad_input_fails_clearly(server, case):
    """length: the one-node conditioning of a graph saved before the encoded-reference nodes; the others: the
    shipped graph (a Wan VAE is refused by the first node that gets it, the reference's encode)."""
    import saved_workflows
    if case == "length":
        prompt = server["assets"].tiny_prompt(saved_workflows.saved(WORKFLOW))
        prompt[CONDITIONING]["inputs"]["length"] = 10
        node, words = CONDITIONING, ["4k+1", "9 or 13"]
    else:
        prompt = e2e_server.tiny(server, WORKFLOW)
        vae = next(k for k, n in prompt.items() if n["class_type"] == "VAELoader")
        prompt[vae]["inputs"]["vae_name"] = server["assets"].MODEL_FILES["vae"]   # the tiny Wan VAE
        node, words = ENCODE, ["not the CogVideoX VAE", "Load VAE"]
    result = server["client"].run(prompt, timeout=600)
    assert result.status == "error" and result.error["node_id"] == node
    assert result.error["exception_type"].endswith("VAPInputError")
    for word in words:
        assert word in result.error["exception_message"], result.error["exception_message"]


def test_long_prompt_is_truncated_like_the_official_and_runs(server, tmp_path):
    """A target prompt past 226 tokens used to fail mid-sampling; the official pipeline truncates it."""
    prompt = e2e_server.tiny(server, WORKFLOW)
    long_prompt = " ".join(f"subject{i} dances" for i in range(700))
    for title in ("Prompt", "Negative prompt"):
        prompt[server["ch"].node_by_title(prompt, title)]["inputs"]["text"] = long_prompt
    prompt[server["ch"].nodes_of(prompt, "BasicScheduler")[0]]["inputs"]["steps"] = 2
    log_start = len(server["server"].log_text())
    result = e2e_server.run_ok(server, prompt)
    _check_video(server, result, tmp_path)
    log = server["server"].log_text()[log_start:]
    assert "VAP: the prompt has" in log and "VAP: the negative prompt has" in log and "first 226" in log
