"""The shipped workflow files: generated, consistent UI/API twins, official settings, and the sampler
choices documented in workflows/README.md checked against the schedules they claim to reproduce.

Host-free except the sigma tests (ComfyUI's own model-sampling and scheduler code).
"""
from __future__ import annotations

import json
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKFLOWS = os.path.join(os.path.dirname(TESTS), "workflows")
API_WORKFLOWS = os.path.join(WORKFLOWS, "api")

from vap_headless import build_workflows as bw  # noqa: E402

NAMES = sorted(bw.WORKFLOWS)


def _load(name, api=True):
    with open(os.path.join(API_WORKFLOWS, f"{name}.api.json") if api else os.path.join(WORKFLOWS, f"{name}.json"),
              encoding="utf-8") as f:
        return json.load(f)


def ch_size(api):
    from vap_headless import client as ch
    return ch.shipped_size(api)


def _by_title(api, title):
    (node,) = [n for n in api.values() if n["_meta"]["title"] == title]
    return node


def test_api_files_are_what_the_builder_writes(tmp_path):
    bw.write_api(str(tmp_path))
    for name in NAMES:
        with open(tmp_path / f"{name}.api.json", encoding="utf-8") as f:
            assert json.load(f) == _load(name), f"workflows/api/{name}.api.json is stale: run python -m vap_headless.build_workflows --api-only"


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twins_describe_the_same_graph(name):
    api, ui = _load(name), _load(name, api=False)
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    ui_links = {(str(l[3]), str(l[1]), l[2]) for l in ui["links"]}  # (target node, source node, source slot)
    api_links = {(k, v[0], v[1]) for k, n in api.items() for v in n["inputs"].values() if isinstance(v, list)}
    assert ui_links == api_links
    assert ui["version"] == 0.4 and ui["last_node_id"] >= max(int(k) for k in api)
    for node in ui["nodes"]:  # loaders carry name + download URL + folder for the frontend's model check
        api_node = api[str(node["id"])]
        if node["type"] in bw.LOADERS:
            file_name = api_node["inputs"][bw.LOADERS[node["type"]]]
            if file_name in bw.CONVERTED:  # made by the pack's converter: no download
                assert "models" not in node.get("properties", {}), node
            else:
                assert node["properties"]["models"] == [bw.model_of(api_node)], node
                assert node["properties"]["models"][0]["name"] == file_name


WAN_NAMES = [n for n in NAMES if n.startswith("wan_")]


@pytest.mark.parametrize("name", WAN_NAMES)
def test_official_demo_settings(name):
    api = _load(name)
    cond = _by_title(api, "VAP Wan Conditioning")
    ref = _by_title(api, "Reference video")["inputs"]
    # size and length in one place: the reference loader (+ extra_frames on the conditioning: the long-video workflow,
    # a longer target in windows of the official 49 frames, test_long_video_workflow); the start image is stretched
    # by the node itself (Lanczos, as the official pipeline), no resize node of its own
    assert cond["class_type"] == "VAPWanConditioningFromReference"
    assert cond["inputs"]["extra_frames"] == (48 if name == "wan_vap_long_video" else 0)
    assert (ref["width"], ref["height"], ref["num_frames"], ref["frame_selection"], ref["resize_mode"]) == \
        (832, 480, 49, "evenly", "stretch")
    assert cond["inputs"]["start_image"] == [next(k for k, n in api.items() if n["_meta"]["title"] == "Start image"), 0]
    encode = _by_title(api, "Encode reference")
    assert encode["class_type"] == "VAPWanEncodeReference"
    assert cond["inputs"]["reference"] == [next(k for k, n in api.items() if n is encode), 0]
    assert encode["inputs"]["reference_frames"] == \
        [next(k for k, n in api.items() if n["_meta"]["title"] == "Reference video"), 0]
    assert encode["inputs"]["clip_vision_reference"] == \
        [next(k for k, n in api.items() if n["_meta"]["title"] == "CLIP Vision Encode (reference)"), 0]
    cond = cond["inputs"]
    official_negative = bw.NEGATIVE
    assert official_negative.startswith("Bright tones, overexposed") and official_negative.endswith("walking backwards")
    assert _by_title(api, "Negative prompt")["inputs"]["text"] == official_negative
    assert _by_title(api, "Reference negative prompt")["inputs"]["text"] == official_negative
    assert _by_title(api, "Create Video")["inputs"]["fps"] == 16.0
    assert cond["ref_negative"] == [next(k for k, n in api.items() if n["_meta"]["title"] == "Reference negative prompt"), 0]
    clip = _by_title(api, "Load CLIP")["inputs"]
    assert clip["type"] == "wan"
    for title in ("CLIP Vision Encode (start image)", "CLIP Vision Encode (reference)"):
        assert _by_title(api, title)["inputs"]["crop"] == "center"
    if name == "wan_vap_reference_guided":
        _check_wan_reference_sampling(api)
        return
    sampler = _by_title(api, "KSampler")["inputs"]
    if name in ("wan_vap_official", "wan_vap_long_video"):
        assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (50, 5.0, "euler", "normal")
        assert _by_title(api, "ModelSamplingSD3")["inputs"]["shift"] == 1.0
    else:
        assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (4, 1.0, "euler", "simple")
        assert _by_title(api, "ModelSamplingSD3")["inputs"]["shift"] == 5.0
        assert _by_title(api, "Step-distill LoRA")["inputs"]["lora_name"] == bw.MODELS["lora"]["name"]


def test_long_video_workflow():
    """The official Wan graph for 97 frames: core 'WAN Context Windows' (windows of the trained 49 frames) between
    ModelSamplingSD3 and the KSampler, a 49-frame reference every window sees whole."""
    api, official = _load("wan_vap_long_video"), _load("wan_vap_official")
    windows_id = next(k for k, n in api.items() if n["class_type"] == "WanContextWindowsManual")
    windows = api[windows_id]["inputs"]
    assert windows["model"] == [next(k for k, n in api.items() if n["class_type"] == "ModelSamplingSD3"), 0]
    assert _by_title(api, "KSampler")["inputs"]["model"] == [windows_id, 0]
    assert windows["context_length"] == 49 and 0 < windows["context_overlap"] < 49
    assert not windows["retain_first_frame"]  # core's default for Wan I2V: the start image stays in the first window
    assert _by_title(api, "VAP Wan Conditioning")["inputs"]["extra_frames"] == 48
    assert _by_title(api, "Reference video")["inputs"]["num_frames"] == 49
    # otherwise the official graph: the same nodes and inputs
    for k, n in official.items():
        if k not in ("12", "17", "18", "31"):
            assert api[k] == n, k
    assert set(api) == set(official) | {windows_id}


def test_resize_long_video_keeps_windows_shorter_than_the_video():
    from vap_headless import client as ch
    api = _load("wan_vap_long_video")
    tiny = ch.resize_workflow(api, 64, 48, 9)
    windows = next(n for n in tiny.values() if n["class_type"] == "WanContextWindowsManual")["inputs"]
    assert _by_title(tiny, "VAP Wan Conditioning")["inputs"]["extra_frames"] == 4  # 5 reference frames + 4 = 9
    assert _by_title(tiny, "Reference video")["inputs"]["num_frames"] == 5
    assert ch.shipped_size(tiny) == (64, 48, 9) and ch.shipped_size(api) == (832, 480, 97)
    assert (windows["context_length"], windows["context_overlap"]) == (5, 2)
    longer = ch.resize_workflow(api, 832, 480, 145)  # a longer video: the reference and windows stay at 49
    assert _by_title(longer, "Reference video")["inputs"]["num_frames"] == 49
    assert _by_title(longer, "VAP Wan Conditioning")["inputs"]["extra_frames"] == 96
    assert next(n for n in longer.values() if n["class_type"] == "WanContextWindowsManual")["inputs"]["context_length"] == 49


def _link(api, title):
    return [next(k for k, n in api.items() if n["_meta"]["title"] == title), 0]


def _check_wan_reference_sampling(api):
    """The official Wan sampling (50 euler steps, normal schedule, shift 1, cfg 5, seed 42) through
    SamplerCustomAdvanced with the VAP Reference Guider."""
    assert _by_title(api, "ModelSamplingSD3")["inputs"]["shift"] == 1.0
    guider = _by_title(api, "VAP Reference Guider")
    assert guider["class_type"] == "VAPReferenceGuider"
    assert {k: guider["inputs"][k] for k in ("cfg", "reference_scale", "negative_without_reference", "dynamic_cfg")} \
        == {"cfg": 5.0, "reference_scale": bw.REFERENCE_SCALE, "negative_without_reference": False,
            "dynamic_cfg": False}
    assert guider["inputs"]["model"] == _link(api, "ModelSamplingSD3")
    assert [guider["inputs"][k] for k in ("positive", "negative")] == \
        [[_link(api, "VAP Wan Conditioning")[0], i] for i in (0, 1)]
    assert _by_title(api, "Sampler (euler)")["inputs"]["sampler_name"] == "euler"
    scheduler = _by_title(api, "Scheduler")["inputs"]
    assert (scheduler["scheduler"], scheduler["steps"], scheduler["denoise"]) == ("normal", 50, 1.0)
    assert scheduler["model"] == _link(api, "ModelSamplingSD3")
    assert _by_title(api, "Noise")["inputs"]["noise_seed"] == 42
    sampler = _by_title(api, "Sampler")
    assert sampler["class_type"] == "SamplerCustomAdvanced"
    assert [sampler["inputs"][k] for k in ("noise", "guider", "sampler", "sigmas")] == \
        [_link(api, t) for t in ("Noise", "VAP Reference Guider", "Sampler (euler)", "Scheduler")]
    assert _by_title(api, "VAE Decode")["inputs"]["samples"] == _link(api, "Sampler")


def test_reference_guided_workflows_are_the_official_ones_with_the_reference_guider():
    """Everything but the guidance equals the official workflow (same node ids for the shared nodes)."""
    for name, official, replaced in (("wan_vap_reference_guided", "wan_vap_official", {"18"}),
                                     ("cog_vap_reference_guided", "cog_vap_official", {"20", "18", "31"})):
        api, base = _load(name), _load(official)
        same = {k for k in base if k not in replaced | {"31"}}
        assert {k: api[k] for k in same} == {k: base[k] for k in same}, name
        assert [n["class_type"] for n in api.values()].count("VAPReferenceGuider") == 1
    cog = _load("cog_vap_reference_guided")
    guider = _by_title(cog, "VAP Reference Guider")["inputs"]
    assert (guider["cfg"], guider["dynamic_cfg"], guider["reference_scale"], guider["zero_terminal_snr"]) == \
        (6.0, True, bw.REFERENCE_SCALE, True)
    assert _by_title(cog, "Sampler")["inputs"]["guider"] == _link(cog, "VAP Reference Guider")
    assert "VAPDynamicCFGGuider" not in [n["class_type"] for n in cog.values()]


def test_cog_official_demo_settings():
    """infer/cog_vap.py + the pipeline defaults (docs/OFFICIAL_MODEL.md#cogvideox-pipeline): 720x480, 49 frames evenly selected, 50 steps,
    guidance 6 with use_dynamic_cfg, the official negative for both branches, fps 16, posterior samples."""
    api = _load("cog_vap_official")
    cond = _by_title(api, "VAP CogVideoX Conditioning")
    assert cond["class_type"] == "VAPCogConditioningFromReference"
    encode = _by_title(api, "Encode reference")
    assert encode["class_type"] == "VAPCogEncodeReference"
    assert cond["inputs"]["reference"] == [next(k for k, n in api.items() if n is encode), 0]
    cond = cond["inputs"]
    ref = _by_title(api, "Reference video")["inputs"]
    assert encode["inputs"]["reference_frames"] == [next(k for k, n in api.items() if n["_meta"]["title"] == "Reference video"), 0]
    assert cond["latent_mode"] == "sample" and ch_size(api) == (720, 480, 49)
    assert (ref["width"], ref["height"], ref["num_frames"], ref["frame_selection"], ref["resize_mode"]) == \
        (720, 480, 49, "evenly", "stretch")
    assert _by_title(api, "Negative prompt")["inputs"]["text"] == bw.NEGATIVE
    assert _by_title(api, "Reference negative prompt")["inputs"]["text"] == bw.NEGATIVE
    assert cond["ref_negative"] == [next(k for k, n in api.items() if n["_meta"]["title"] == "Reference negative prompt"), 0]
    assert _by_title(api, "Load CLIP")["inputs"]["type"] == "cogvideox"
    guider = _by_title(api, "VAP Dynamic CFG Guider")["inputs"]
    assert (guider["cfg"], guider["dynamic"]) == (6.0, True)
    scheduler = _by_title(api, "Scheduler")["inputs"]
    assert (scheduler["scheduler"], scheduler["steps"], scheduler["denoise"]) == ("simple", 50, 1.0)
    assert _by_title(api, "DDIM (VOIDSampler)")["class_type"] == "VOIDSampler"
    sampler = _by_title(api, "Sampler")
    assert sampler["class_type"] == "SamplerCustomAdvanced"
    assert [sampler["inputs"][k][0] for k in ("guider", "sampler", "sigmas")] == \
        [next(k for k, n in api.items() if n["_meta"]["title"] == t) for t in ("VAP Dynamic CFG Guider",
                                                                                 "DDIM (VOIDSampler)", "Scheduler")]
    assert _by_title(api, "Create Video")["inputs"]["fps"] == 16.0
    assert _by_title(api, "Load Diffusion Model")["inputs"]["unet_name"] == bw.COG_BASE_NAME
    assert _by_title(api, "Load VAP Expert")["inputs"]["expert_name"] == bw.COG_EXPERT_NAME


def _sigmas(shift, scheduler, steps):
    import comfy.model_sampling
    import comfy.samplers

    class FlowConst(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass
    ms = FlowConst(None)
    ms.set_parameters(shift=shift, multiplier=1000)  # exactly what core ModelSamplingSD3 sets
    return comfy.samplers.calculate_sigmas(ms, scheduler, steps).double()


def test_official_schedule_is_flow_match_euler_shift_1(pack):
    """euler + normal + shift 1.0 + 50 steps = diffusers FlowMatchEulerDiscreteScheduler() (shift 1.0, 1000 train
    steps) after set_timesteps(50): sigmas linspace(1, 1/1000, 50) then 0; Euler on a flow (CONST) model is the
    same update x + (sigma_next - sigma) * v."""
    import torch
    s = bw.OFFICIAL_SAMPLING
    sigmas = _sigmas(s["shift"], s["scheduler"], s["steps"])
    expected = torch.cat([torch.linspace(1.0, 1 / 1000, 50, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    assert sigmas.shape == expected.shape
    assert torch.allclose(sigmas, expected, atol=1e-6)


def test_lora_schedule_is_the_step_distill_timesteps(pack):
    """euler + simple + shift 5 + 4 steps = the step-distill LoRA's own schedule (lightx2v: denoising steps
    1000/750/500/250 with sample_shift 5): sigma = 5t / (1 + 4t) at t = 1, .75, .5, .25, then 0."""
    import torch
    s = bw.LORA_SAMPLING
    sigmas = _sigmas(s["shift"], s["scheduler"], s["steps"])
    t = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    expected = torch.cat([5 * t / (1 + 4 * t), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(sigmas, expected, atol=1e-6)


# ------------------------------------------------------------------------------------------ runner (host-free)

def _runner():
    from vap_headless import cli as run
    return run


def test_runner_overrides_reach_the_right_nodes():
    run = _runner()
    api = _load("wan_vap_official")
    args = run.parse_args(["--prompt", "P", "--reference-prompt", "R", "--negative-prompt", "N", "--seed", "7",
                           "--steps", "3"])
    run.apply_overrides(api, args)
    run.set_inputs(api, "me.png", "clip.mp4")
    assert _by_title(api, "Prompt")["inputs"]["text"] == "P"
    assert _by_title(api, "Reference caption")["inputs"]["text"] == "R"
    assert _by_title(api, "Negative prompt")["inputs"]["text"] == "N"
    assert _by_title(api, "Reference negative prompt")["inputs"]["text"] == "N"
    assert (_by_title(api, "KSampler")["inputs"]["seed"], _by_title(api, "KSampler")["inputs"]["steps"]) == (7, 3)
    assert _by_title(api, "Start image")["inputs"]["image"] == "me.png"
    assert _by_title(api, "Reference video")["inputs"]["file"] == "clip.mp4"
    untouched = _load("wan_vap_official")
    run.apply_overrides(untouched, run.parse_args([]))
    assert untouched == _load("wan_vap_official")


def test_runner_overrides_seed_and_steps_of_a_custom_sampler_graph():
    run = _runner()
    api = _load("cog_vap_official")
    run.apply_overrides(api, run.parse_args(["--seed", "7", "--steps", "3"]))
    assert _by_title(api, "Noise")["inputs"]["noise_seed"] == 7
    # one official stream: the conditioning's VAE samples and the noise come from the same seed
    assert _by_title(api, "VAP CogVideoX Conditioning")["inputs"]["seed"] == 7
    assert _by_title(api, "Scheduler")["inputs"]["steps"] == 3


def test_runner_names_missing_models_with_download_and_folder():
    run = _runner()
    api = _load("wan_vap_lora_upscale")

    class FakeClient:  # object_info of a server that has only the VAE
        def object_info(self):
            have = {"VAELoader": ("vae_name", [bw.MODELS["vae"]["name"]])}
            info = {}
            for node in api.values():
                for name, value in node["inputs"].items():
                    if isinstance(value, str) and value.endswith(".safetensors"):
                        options = have.get(node["class_type"], (name, []))[1]
                        info.setdefault(node["class_type"], {"input": {"required": {}}})["input"]["required"][name] = \
                            ["COMBO", {"options": options}]
            return info

    with pytest.raises(run.ch.HeadlessError) as err:
        run.check_models(FakeClient(), api, "wan_vap_lora_upscale")
    text = str(err.value)
    for key in ("base", "te", "clip_vision", "lora", "upscale"):
        assert bw.MODELS[key]["url"] in text and f"ComfyUI/models/{bw.MODELS[key]['directory']}/" in text
    assert bw.MODELS["vae"]["name"] not in text
    assert f"python -m vap_core.convert" in text and bw.EXPERT_NAME in text


def test_runner_tells_how_to_make_the_cog_files():
    run = _runner()
    api = _load("cog_vap_official")

    class EmptyServer:
        def object_info(self):
            info = {}
            for node in api.values():
                for name, value in node["inputs"].items():
                    if isinstance(value, str) and value.endswith(".safetensors"):
                        info.setdefault(node["class_type"], {"input": {"required": {}}})["input"]["required"][name] = \
                            ["COMBO", {"options": []}]
            return info

    with pytest.raises(run.ch.HeadlessError) as err:
        run.check_models(EmptyServer(), api, "cog_vap_official")
    text = str(err.value)
    assert f"--expert ComfyUI/models/vap/{bw.COG_EXPERT_NAME}" in text
    assert f"--base ComfyUI/models/diffusion_models/{bw.COG_BASE_NAME}" in text
    for key in ("t5", "cog_vae"):
        assert bw.MODELS[key]["url"] in text


def test_resize_workflow_scales_sizes_only():
    from vap_headless import client as ch
    api = _load("wan_vap_lora_upscale")
    tiny = ch.resize_workflow(api, 64, 48, 9)
    assert _by_title(tiny, "Reference video")["inputs"]["num_frames"] == 9
    assert (_by_title(tiny, "Reference video")["inputs"]["width"], ch.shipped_size(tiny)) == (64, (64, 48, 9))
    assert _by_title(tiny, "VAP Wan Conditioning")["inputs"]["extra_frames"] == 0
    assert (_by_title(tiny, "Resize to 2x")["inputs"]["width"], _by_title(tiny, "Resize to 2x")["inputs"]["height"]) == (128, 96)
    assert _by_title(tiny, "KSampler")["inputs"] == _by_title(api, "KSampler")["inputs"]


def test_resize_workflow_uses_each_workflows_own_size():
    from vap_headless import client as ch
    tiny = ch.resize_workflow(_load("cog_vap_official"), 64, 48, 9)
    assert ch.shipped_size(tiny) == (64, 48, 9)
    assert _by_title(tiny, "Reference video")["inputs"]["num_frames"] == 9
