"""The shipped API workflows through a REAL ComfyUI server (``python main.py --cpu``), end to end.

One server for the session (fixture ``server``, tests/e2e_server.py): ComfyUI from the host checkout on a free
127.0.0.1 port, its own base directory (tiny models in models/, inputs in input/, output/), this pack and the
stand-in node pack (vap_headless/demo/standin_nodes) registered as custom nodes through an ``extra_model_paths`` yaml.
The workflows are submitted over HTTP exactly as shipped except file names, sizes (64x48, 9 frames)
and the two stand-in loaders (UMT5 / CLIP vision, same inputs as the core loaders). Checks: the mp4
(frames, size, fps, decodable, not constant), websocket progress, cache on resubmission, /interrupt,
clear errors for bad input while the server keeps serving.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

import e2e_server
import host

TESTS = os.path.dirname(os.path.abspath(__file__))
PACK = os.path.dirname(TESTS)

pytestmark = [pytest.mark.server, pytest.mark.host]

W, H, N = 64, 48, 9   # tiny size used for every run (e2e_assets.TINY_SIZE)
SAMPLER = "18"        # KSampler node id in both shipped workflows
REFERENCE = "12"      # VAPLoadReferenceVideo
CONDITIONING = "17"   # VAPWanConditioningFromReference (VAPWanConditioning in graphs saved before it)


def test_pack_and_stand_ins_are_loaded(server):
    info = server["client"].object_info()
    for node in ("VAPExpertLoader", "VAPApplyExpert", "VAPLoadReferenceVideo", "VAPWanConditioning",
                 "VAPTestTinyUMT5Loader", "VAPTestTinyCLIPVisionLoader"):
        assert node in info, f"{node} not registered; server log:\n{server['server'].log_tail()}"
    assert "Cannot import" not in server["server"].log_text()



def test_workflow_templates_list_each_shipped_graph_once(server):
    """ComfyUI lists a pack's workflows/*.json as templates (/workflow_templates) and serves the whole folder:
    each shipped UI graph is listed once, the API twins (workflows/api/) are not listed, and the runner's code is
    not there (only the README's entry point ``run.py``, a few lines that import vap_headless)."""
    client = server["client"]
    listed = client.get_json("/workflow_templates")["ComfyUI-VAP"]
    shipped = sorted(f[:-5] for f in os.listdir(os.path.join(PACK, "workflows")) if f.endswith(".json"))
    assert sorted(listed) == shipped and len(listed) == len(set(listed)) == 6
    assert not [n for n in listed if n.endswith(".api")]
    ui = client.get_json("/api/workflow_templates/ComfyUI-VAP/wan_vap_official.json")
    assert "nodes" in ui and "links" in ui   # the drag-and-drop format
    import urllib.error
    for path in ("comfy_headless.py", "build_workflows.py", "batch.py"):
        with pytest.raises(urllib.error.HTTPError):
            client._request("GET", f"/api/workflow_templates/ComfyUI-VAP/{path}")
    python = [f for _, _, files in os.walk(os.path.join(PACK, "workflows")) for f in files if f.endswith(".py")]
    assert python == ["run.py"]
    with open(os.path.join(PACK, "workflows", "run.py")) as f:
        assert len(f.read().splitlines()) <= 12

def test_official_workflow_end_to_end_progress_and_cache(server, tmp_path):
    prompt = e2e_server.tiny(server, "wan_vap_official")
    steps = prompt[SAMPLER]["inputs"]["steps"]
    assert steps == 50  # shipped official step count, unchanged

    result = e2e_server.run_ok(server, prompt)
    video = e2e_server.video(server, result, tmp_path)
    assert video["frames"].shape == (N, H, W, 3)
    assert (video["width"], video["height"], video["codec"], video["fps"]) == (W, H, "h264", 16.0)
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0

    # websocket progress of the sampler: one event per step, ending at steps/steps
    sampler = [p for p in result.progress if p.get("node") == SAMPLER]
    assert sampler and all(p["max"] == steps for p in sampler)
    values = [p["value"] for p in sampler]
    assert values == sorted(values) and values[-1] == steps
    assert SAMPLER in result.executed

    # the same prompt again: everything is served from the cache, no node runs, same file reported
    again = e2e_server.run_ok(server, prompt)
    assert set(prompt) <= again.cached, f"not cached: {set(prompt) - again.cached}"
    assert again.executed == [] and not [p for p in again.progress if p.get("node") == SAMPLER]


def test_lora_upscale_workflow_end_to_end(server, tmp_path):
    prompt = e2e_server.tiny(server, "wan_vap_lora_upscale")
    assert prompt[SAMPLER]["inputs"]["steps"] == 4 and prompt[SAMPLER]["inputs"]["cfg"] == 1.0
    result = e2e_server.run_ok(server, prompt)
    video = e2e_server.video(server, result, tmp_path)
    assert video["frames"].shape == (N, 2 * H, 2 * W, 3)  # x4 model, then resized to 2x
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0
    assert "lora key not loaded" not in server["server"].log_text()


def test_long_video_workflow_samples_in_context_windows(server, tmp_path):
    """The long-video workflow (core 'WAN Context Windows', a reference shorter than the video) at the tiny size:
    windows of 2 latent frames over 3, and a whole video comes out."""
    prompt = e2e_server.tiny(server, "wan_vap_long_video")
    prompt[SAMPLER]["inputs"]["steps"] = 3
    assert prompt[REFERENCE]["inputs"]["num_frames"] < server["ch"].shipped_size(prompt)[2] == N
    assert prompt[CONDITIONING]["inputs"]["extra_frames"] > 0
    log_start = len(server["server"].log_text())
    result = e2e_server.run_ok(server, prompt)
    video = e2e_server.video(server, result, tmp_path)
    assert video["frames"].shape == (N, H, W, 3)
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0
    log = server["server"].log_text()[log_start:]
    assert "Using context windows" in log and "Context window 2/" in log, log[-3000:]


def test_interrupt_stops_sampling_and_the_next_prompt_runs(server):
    client = server["client"]
    prompt = e2e_server.tiny(server, "wan_vap_official")
    prompt[SAMPLER]["inputs"].update(steps=10000, seed=1234)
    interrupted = []

    def on_event(event):
        data = event.get("data") or {}
        if event["type"] == "progress" and data.get("node") == SAMPLER and not interrupted:
            interrupted.append(data["value"])
            client.interrupt()

    result = client.wait(client.queue_prompt(prompt), timeout=900, on_event=on_event)
    assert interrupted, "no sampler progress arrived before the run ended"
    assert result.status == "interrupted"
    assert max(p["value"] for p in result.progress if p.get("node") == SAMPLER) < 10000
    assert result.output_files() == []

    prompt[SAMPLER]["inputs"].update(steps=2, seed=4321)
    e2e_server.run_ok(server, prompt)


@pytest.mark.parametrize("case", ["corrupt_video", "extra_frames", "frames_mismatch",
                                  "conditioning_width", "conditioning_length"])
def test_bad_input_fails_clearly_and_the_server_keeps_serving(server, case, tmp_path):
    """The shipped graph (Encode Reference + Conditioning from Reference), and the one-node conditioning of graphs
    saved before it (its own width/height/length widgets: the last three cases)."""
    import saved_workflows
    client = server["client"]
    one_node = case in ("frames_mismatch", "conditioning_width", "conditioning_length")
    prompt = (server["assets"].tiny_prompt(saved_workflows.saved("wan_vap_official")) if one_node
              else e2e_server.tiny(server, "wan_vap_official"))
    prompt[SAMPLER]["inputs"].update(steps=2, seed=99)
    bad = copy.deepcopy(prompt)
    if case == "corrupt_video":
        with open(os.path.join(server["base"], "input", "corrupt.mp4"), "wb") as f:
            f.write(os.urandom(4096))
        bad[REFERENCE]["inputs"]["file"] = "corrupt.mp4"
        node, words = REFERENCE, ["corrupt.mp4", "damaged or not a video"]
    elif case == "extra_frames":
        bad[CONDITIONING]["inputs"]["extra_frames"] = 6
        node, words = CONDITIONING, ["multiple of 4", "got 6", "use 4 or 8"]
    elif case == "frames_mismatch":
        # longer than the video (a shorter 4k+1 reference is taken whole: test_wan_conditioning.py)
        bad[REFERENCE]["inputs"]["num_frames"] = 13
        node, words = CONDITIONING, ["13 frames", "length 9", "num_frames = 9"]
    elif case == "conditioning_width":
        bad[CONDITIONING]["inputs"]["width"] = 100
        node, words = CONDITIONING, ["multiples of 16", "100x48", "96x48"]
    else:
        bad[CONDITIONING]["inputs"]["length"] = 10
        node, words = CONDITIONING, ["4k+1", "got 10", "9 or 13"]

    result = client.run(bad, timeout=600)
    assert result.status == "error"
    assert result.error["node_id"] == node
    assert result.error["exception_type"].endswith("VAPInputError")
    for word in words:
        assert word in result.error["exception_message"], result.error["exception_message"]
    assert "Traceback" not in result.error["exception_message"]

    e2e_server.run_ok(server, prompt)  # the server is fine and runs the corrected prompt


def test_invalid_size_is_refused_at_submission(server):
    ch = server["ch"]
    prompt = e2e_server.tiny(server, "wan_vap_official")
    prompt[REFERENCE]["inputs"]["width"] = 100
    with pytest.raises(ch.PromptError) as refused:
        server["client"].queue_prompt(prompt)
    errors = refused.value.data["node_errors"]
    assert list(errors) == [REFERENCE]
    messages = " ".join(e["details"] for e in errors[REFERENCE]["errors"])
    assert "100" in messages and "multiple of 16" in messages and "96 or 112" in messages
    assert server["client"].get_json("/system_stats")["system"]  # still serving


def test_http_api_prompt_is_the_shipped_one_except_names_and_sizes(server):
    """Guard for the claim in the module docstring: only names, sizes and the stand-in class types differ."""
    ch, assets = server["ch"], server["assets"]
    for name in ("wan_vap_official", "wan_vap_lora_upscale", "cog_vap_official", "wan_vap_long_video"):
        shipped = ch.load_api_workflow(name)
        tiny = assets.tiny_prompt(shipped)
        assert set(tiny) == set(shipped)
        for node_id, node in shipped.items():
            changed = {k for k in node["inputs"] if node["inputs"][k] != tiny[node_id]["inputs"][k]}
            allowed = {"width", "height", "length", "num_frames", "extra_frames", "image", "file", "unet_name",
                       "expert_name",
                       "vae_name", "clip_name", "lora_name", "model_name",
                       "context_length", "context_overlap"}  # the long-video windows shrink with the video
            assert changed <= allowed, (node_id, changed - allowed)
            if tiny[node_id]["class_type"] != node["class_type"]:
                standins = assets.COG_STANDIN_FOR if assets.is_cog_prompt(shipped) else assets.STANDIN_FOR
                assert standins[node["class_type"]] == tiny[node_id]["class_type"]
        json.dumps(tiny)


def test_runner_demo_command(tmp_path):
    """The documented smoke test, as a user runs it: python workflows/run.py --demo."""
    import subprocess
    import sys

    import av
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    out = tmp_path / "demo.mp4"
    proc = subprocess.run([sys.executable, os.path.join(PACK, "workflows", "run.py"), "--demo",
                           "--comfyui", host.COMFYUI_PATH, "--output", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == str(out)
    assert "50/50 KSampler" in proc.stderr            # progress bar from the websocket events
    assert "this video is noise" in proc.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert (len(frames), stream.width, stream.height) == (N, W, H)


LONG_PROMPT = " ".join(f"subject{i} dances" for i in range(700))  # far past 512 tokens for any T5 tokenizer


@pytest.mark.parametrize("name", ["wan_vap_official", "wan_vap_lora_upscale"])
def test_long_prompt_is_truncated_like_the_official_and_runs(server, name, tmp_path):
    prompt = e2e_server.tiny(server, name)
    prompt[SAMPLER]["inputs"]["steps"] = 2
    for title in ("Prompt", "Negative prompt"):
        # per workflow, so ComfyUI's cache cannot serve the encodes (and their warnings) from the other run
        prompt[server["ch"].node_by_title(prompt, title)]["inputs"]["text"] = f"{name}: {LONG_PROMPT}"
    log_start = len(server["server"].log_text())
    result = e2e_server.run_ok(server, prompt)
    assert e2e_server.video(server, result, tmp_path)["frames"].shape[0] == N
    log = server["server"].log_text()[log_start:]
    assert "VAP: the prompt has" in log and "VAP: the negative prompt has" in log and "using the first 512" in log
