"""Maintainers' tool: (re)write the shipped workflows from one description.

    python -m vap_headless.build_workflows            # API + UI files (needs ComfyUI and chromium)
    python -m vap_headless.build_workflows --api-only # only workflows/api/*.api.json (no browser, no server)

The API-format files are written straight from the graphs below. The UI-format files are made by the
REAL frontend that the host serves: a headless Chromium opens it, loads the API graph with the frontend's
own ``loadApiJson``, the nodes get their positions, titles, groups and ``properties.models`` (file name,
download URL, folder), and ``graph.serialize()`` writes the drag-and-drop file. So the widget layout
(hidden "control after generate" values, upload buttons...) is exactly what this frontend version writes.
tests/test_frontend_workflows.py checks that each UI file converts back to its API file.
"""
from __future__ import annotations

import argparse
import json
import os

from .client import API_WORKFLOW_DIR, PACK_DIR, WORKFLOW_DIR

# Official demo settings (docs/OFFICIAL_MODEL.md#wan-pipeline, infer/wan_vap.py of bytedance/Video-As-Prompt); see workflows/README.md
WIDTH, HEIGHT, LENGTH, FPS = 832, 480, 49, 16
NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
            "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
            "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
            "picture, messy background, three legs, many people in the background, walking backwards")
PROMPT = ("A young woman with curly hair, wearing a green hijab and a floral dress, plays a violin in front of a "
          "vintage green car on a tree-lined street. She executes a swift counter-clockwise turn to face the camera. "
          "During the turn, a brilliant shower of golden, sparkling particles erupts and momentarily obscures her "
          "figure. As the particles fade, she is revealed to have seamlessly transformed into a Labubu toy "
          "character. This new figure, now with the toy's signature large ears, big eyes, and toothy grin, "
          "maintains the original pose and continues playing the violin. The character's clothing—the green hijab, "
          "floral dress, and black overcoat—remains identical to the woman's. Throughout this transition, the "
          "camera stays static, and the street-side environment remains completely consistent.")
REF_CAPTION = ("A man stands with his back to the camera on a dirt path overlooking sun-drenched, rolling green tea "
               "plantations. He wears a blue and green plaid shirt, dark pants, and white shoes. As he turns to face "
               "the camera and spreads his arms, a brief, magical burst of sparkling golden light particles envelops "
               "him. Through this shimmer, he seamlessly transforms into a Labubu toy character. His head morphs into "
               "the iconic large, furry-eared head of the toy, featuring a wide grin with pointed teeth and red cheek "
               "markings. The character retains the man's original plaid shirt and clothing, which now fit its "
               "stylized, cartoonish body. The camera remains static throughout the transformation, positioned low "
               "among the tea bushes, maintaining a consistent view of the subject and the expansive scenery.")
START_IMAGE = "vap_start_image.png"       # put your image in ComfyUI/input (or use the upload button)
REFERENCE_VIDEO = "vap_reference.mp4"     # put your reference clip in ComfyUI/input

REPACK = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODELS = {
    "base": {"name": "wan2.1_i2v_480p_14B_fp16.safetensors", "directory": "diffusion_models",
             "url": f"{REPACK}/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors"},
    "te": {"name": "umt5_xxl_fp16.safetensors", "directory": "text_encoders",
           "url": f"{REPACK}/text_encoders/umt5_xxl_fp16.safetensors"},
    "clip_vision": {"name": "clip_vision_h.safetensors", "directory": "clip_vision",
                    "url": f"{REPACK}/clip_vision/clip_vision_h.safetensors"},
    "vae": {"name": "wan_2.1_vae.safetensors", "directory": "vae", "url": f"{REPACK}/vae/wan_2.1_vae.safetensors"},
    "lora": {"name": "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", "directory": "loras",
             "url": "https://huggingface.co/Kijai/WanVideo_comfy/resolve/main/Lightx2v/"
                    "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors"},
    "upscale": {"name": "RealESRGAN_x4plus.safetensors", "directory": "upscale_models",
                "url": "https://huggingface.co/Comfy-Org/Real-ESRGAN_repackaged/resolve/main/RealESRGAN_x4plus.safetensors"},
    # CogVideoX: the same T5 and VAE files as core's own CogVideoX blueprint (blueprints/Video Inpaint (VOID).json)
    "t5": {"name": "t5xxl_fp16.safetensors", "directory": "text_encoders",
           "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"},
    "cog_vae": {"name": "cogvideox_vae.safetensors", "directory": "vae",
                "url": "https://huggingface.co/Comfy-Org/void-model/resolve/main/vae/cogvideox_vae.safetensors"},
}
# The expert has no download of its own: it is made from the official release by the pack's converter
# (python -m vap_core.convert ...). Its file name is the one the README's conversion command writes.
EXPERT_NAME = "vap_wan2.1_14b_expert_bf16.safetensors"
# CogVideoX: expert AND base come out of the official release (Video-As-Prompt-CogVideoX-5B) through the converter
COG_EXPERT_NAME = "vap_cogvideox_5b_expert_bf16.safetensors"
COG_BASE_NAME = "vap_cogvideox_5b_i2v_base_bf16.safetensors"
CONVERTED = {EXPERT_NAME: "vap", COG_EXPERT_NAME: "vap", COG_BASE_NAME: "diffusion_models"}

# sampler settings (the reasons are in workflows/README.md)
OFFICIAL_SAMPLING = {"steps": 50, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "shift": 1.0}
LORA_SAMPLING = {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "shift": 5.0}
SEED = 42
UPSCALED = (WIDTH * 2, HEIGHT * 2)  # after the x4 model, resized down to 2x


def _node(class_type, title, **inputs):
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def wan_vap_graph(lora: bool) -> dict:
    """API-format graph. Node ids are stable: run.py and the tests find nodes by class and title."""
    s = LORA_SAMPLING if lora else OFFICIAL_SAMPLING
    g = {
        "1": _node("UNETLoader", "Load Diffusion Model", unet_name=MODELS["base"]["name"], weight_dtype="default"),
        "2": _node("VAPExpertLoader", "Load VAP Expert", expert_name=EXPERT_NAME, weight_dtype="default"),
        "3": _node("VAPApplyExpert", "Apply VAP Expert", model=["1", 0], vap_expert=["2", 0],
                   start_percent=0.0, end_percent=1.0),
        "4": _node("ModelSamplingSD3", "ModelSamplingSD3", model=["3", 0], shift=s["shift"]),
        "5": _node("CLIPLoader", "Load CLIP", clip_name=MODELS["te"]["name"], type="wan", device="default"),
        "6": _node("CLIPTextEncode", "Prompt", text=PROMPT, clip=["5", 0]),
        "7": _node("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=["5", 0]),
        "8": _node("CLIPTextEncode", "Reference caption", text=REF_CAPTION, clip=["5", 0]),
        "9": _node("CLIPTextEncode", "Reference negative prompt", text=NEGATIVE, clip=["5", 0]),
        "10": _node("CLIPVisionLoader", "Load CLIP Vision", clip_name=MODELS["clip_vision"]["name"]),
        "11": _node("LoadImage", "Start image", image=START_IMAGE),
        "12": _node("VAPLoadReferenceVideo", "Reference video", file=REFERENCE_VIDEO, frame_selection="evenly",
                    num_frames=LENGTH, width=WIDTH, height=HEIGHT, resize_mode="stretch", seed=0),
        "13": _node("CLIPVisionEncode", "CLIP Vision Encode (start image)", clip_vision=["10", 0], image=["11", 0],
                    crop="center"),
        "14": _node("CLIPVisionEncode", "CLIP Vision Encode (reference)", clip_vision=["10", 0], image=["12", 2],
                    crop="center"),
        "15": _node("ImageScale", "Resize start image (Lanczos stretch)", image=["11", 0], upscale_method="lanczos",
                    width=WIDTH, height=HEIGHT, crop="disabled"),
        "16": _node("VAELoader", "Load VAE", vae_name=MODELS["vae"]["name"]),
        "17": _node("VAPWanConditioning", "VAP Wan Conditioning", positive=["6", 0], negative=["7", 0],
                    ref_positive=["8", 0], vae=["16", 0], width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1,
                    start_image=["15", 0], reference_frames=["12", 0], clip_vision_start_image=["13", 0],
                    clip_vision_reference=["14", 0], ref_negative=["9", 0]),
        "18": _node("KSampler", "KSampler", model=["4", 0], seed=SEED, steps=s["steps"], cfg=s["cfg"],
                    sampler_name=s["sampler_name"], scheduler=s["scheduler"], positive=["17", 0],
                    negative=["17", 1], latent_image=["17", 2], denoise=1.0),
        "19": _node("VAEDecode", "VAE Decode", samples=["18", 0], vae=["16", 0]),
    }
    if lora:
        g["20"] = _node("LoraLoaderModelOnly", "Step-distill LoRA", model=["1", 0],
                        lora_name=MODELS["lora"]["name"], strength_model=1.0)
        g["3"]["inputs"]["model"] = ["20", 0]
        g["21"] = _node("UpscaleModelLoader", "Load Upscale Model", model_name=MODELS["upscale"]["name"])
        g["22"] = _node("ImageUpscaleWithModel", "Upscale x4", upscale_model=["21", 0], image=["19", 0])
        g["23"] = _node("ImageScale", "Resize to 2x", image=["22", 0], upscale_method="lanczos",
                        width=UPSCALED[0], height=UPSCALED[1], crop="disabled")
        frames, prefix = ["23", 0], "video/VAP_lora_upscaled"
    else:
        frames, prefix = ["19", 0], "video/VAP"
    g["30"] = _node("CreateVideo", "Create Video", images=frames, fps=float(FPS), bit_depth=8)
    g["31"] = _node("SaveVideo", "Save Video", video=["30", 0], filename_prefix=prefix, format="mp4", codec="h264")
    return g


# CogVideoX official demo (infer/cog_vap.py, docs/OFFICIAL_MODEL.md#cogvideox-pipeline): 720x480, 49 frames, 50 steps, dynamic CFG 6, fps 16
COG_WIDTH, COG_HEIGHT, COG_LENGTH, COG_FPS = 720, 480, 49, 16
COG_SAMPLING = {"steps": 50, "cfg": 6.0, "dynamic": True, "zero_terminal_snr": True, "scheduler": "simple"}
COG_PROMPT = ("A chestnut-colored horse stands on a grassy hill against a backdrop of distant, snow-dusted mountains. "
              "The horse begins to inflate, its defined, muscular body swelling and rounding into a smooth, "
              "balloon-like form while retaining its rich, brown hide color. Without changing its orientation, the "
              "now-buoyant horse lifts silently from the ground. It begins a steady vertical ascent, rising straight "
              "up and eventually floating out of the top of the frame. The camera remains completely static "
              "throughout the entire sequence, holding a fixed shot on the landscape as the horse transforms and "
              "departs, ensuring the verdant hill and mountain range in the background stay perfectly still.")
COG_REF_CAPTION = ("A hand holds up a single beige sneaker decorated with gold calligraphy and floral illustrations, "
                   "with small green plants tucked inside. The sneaker immediately begins to inflate like a balloon, "
                   "its shape distorting as the decorative details stretch and warp across the expanding surface. It "
                   "rapidly transforms into a perfectly smooth, matte beige sphere, inheriting the primary color from "
                   "the original shoe. Once the transformation is complete, the new balloon-like object quickly "
                   "ascends, moving straight up and exiting the top of the frame. The camera remains completely "
                   "static and the plain white background is unchanged throughout the entire sequence.")


def cog_vap_graph() -> dict:
    """API-format graph of the official CogVideoX demo: SamplerCustomAdvanced with the VAP dynamic CFG guider,
    core's alpha-space DDIM (VOIDSampler) and the 'simple' (= trailing) schedule; see docs/COGVIDEOX.md."""
    s = COG_SAMPLING
    return {
        "1": _node("UNETLoader", "Load Diffusion Model", unet_name=COG_BASE_NAME, weight_dtype="default"),
        "2": _node("VAPExpertLoader", "Load VAP Expert", expert_name=COG_EXPERT_NAME, weight_dtype="default"),
        "3": _node("VAPApplyExpert", "Apply VAP Expert", model=["1", 0], vap_expert=["2", 0],
                   start_percent=0.0, end_percent=1.0),
        "5": _node("CLIPLoader", "Load CLIP", clip_name=MODELS["t5"]["name"], type="cogvideox", device="default"),
        "6": _node("CLIPTextEncode", "Prompt", text=COG_PROMPT, clip=["5", 0]),
        "7": _node("CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=["5", 0]),
        "8": _node("CLIPTextEncode", "Reference caption", text=COG_REF_CAPTION, clip=["5", 0]),
        "9": _node("CLIPTextEncode", "Reference negative prompt", text=NEGATIVE, clip=["5", 0]),
        "11": _node("LoadImage", "Start image", image=START_IMAGE),
        "12": _node("VAPLoadReferenceVideo", "Reference video", file=REFERENCE_VIDEO, frame_selection="evenly",
                    num_frames=COG_LENGTH, width=COG_WIDTH, height=COG_HEIGHT, resize_mode="stretch", seed=0),
        "16": _node("VAELoader", "Load VAE", vae_name=MODELS["cog_vae"]["name"]),
        "17": _node("VAPCogConditioning", "VAP CogVideoX Conditioning", positive=["6", 0], negative=["7", 0],
                    ref_positive=["8", 0], vae=["16", 0], width=COG_WIDTH, height=COG_HEIGHT, length=COG_LENGTH,
                    batch_size=1, start_image=["11", 0], reference_frames=["12", 0], latent_mode="sample",
                    seed=SEED, ref_negative=["9", 0]),
        "20": _node("VAPDynamicCFGGuider", "VAP Dynamic CFG Guider", model=["3", 0], positive=["17", 0],
                    negative=["17", 1], cfg=s["cfg"], dynamic=s["dynamic"],
                    zero_terminal_snr=s["zero_terminal_snr"]),
        "21": _node("VOIDSampler", "DDIM (VOIDSampler)"),
        "22": _node("BasicScheduler", "Scheduler", model=["3", 0], scheduler=s["scheduler"], steps=s["steps"],
                    denoise=1.0),
        # the official noise: the noise part of the official one-generator stream whose VAE-sample part the
        # conditioning replays with the same seed (docs/OFFICIAL_MODEL.md#random-numbers)
        "24": _node("VAPOfficialNoise", "Noise", noise_seed=SEED, variant="cogvideox", device="cpu", dtype="float32"),
        "18": _node("SamplerCustomAdvanced", "Sampler", noise=["24", 0], guider=["20", 0], sampler=["21", 0],
                    sigmas=["22", 0], latent_image=["17", 2]),
        "19": _node("VAEDecode", "VAE Decode", samples=["18", 0], vae=["16", 0]),
        "30": _node("CreateVideo", "Create Video", images=["19", 0], fps=float(COG_FPS), bit_depth=8),
        "31": _node("SaveVideo", "Save Video", video=["30", 0], filename_prefix="video/VAP_cogvideox", format="mp4",
                    codec="h264"),
    }


# Long video (docs/HOST_INTEGRATION.md#context-windows): the official Wan settings for a 97-frame video sampled by core
# 'WAN Context Windows' in windows of 49 frames (the trained length); every window sees the whole 49-frame reference
LONG_LENGTH, LONG_REF_FRAMES = 97, LENGTH
LONG_WINDOWS = {"context_length": LENGTH, "context_overlap": 24, "context_schedule": "standard_uniform",
                "context_stride": 1, "closed_loop": False, "fuse_method": "pyramid", "freenoise": True,
                "retain_first_frame": False, "split_conds_to_windows": False}


def wan_vap_long_video_graph() -> dict:
    """The official Wan graph with a longer target, the reference at 49 frames and core 'WAN Context Windows'
    between ModelSamplingSD3 and the KSampler (node 25)."""
    g = wan_vap_graph(lora=False)
    g["17"]["inputs"]["length"] = LONG_LENGTH
    g["12"]["inputs"]["num_frames"] = LONG_REF_FRAMES
    g["25"] = _node("WanContextWindowsManual", "WAN Context Windows", model=["4", 0], **LONG_WINDOWS)
    g["18"]["inputs"]["model"] = ["25", 0]
    g["31"]["inputs"]["filename_prefix"] = "video/VAP_long"
    return g


LONG_LAYOUT_EXTRA = {"25": (3, 900)}
LONG_GROUPS = [
    ("Models", "#3f789e", ["1", "2", "3", "4", "5", "16", "10"]),
    ("Prompts: target and reference", "#8A8", ["6", "7", "8", "9"]),
    ("Inputs: start image and reference video", "#b58b2a", ["11", "15", "12", "13", "14"]),
    ("Sample: 97 frames in context windows of 49", "#a1309b", ["17", "18", "25"]),
    ("Decode and save", "#444", ["19", "30", "31"]),
]


# Reference guidance (docs/REFERENCE_GUIDANCE.md): the official settings with the VAP Reference Guider in place of the
# plain CFG, so the reference video can be followed more strongly. reference_scale 0 would be the official run.
REFERENCE_SCALE = 1.0


def wan_vap_reference_graph() -> dict:
    """wan_vap_official with SamplerCustomAdvanced + VAP Reference Guider (cfg 5, reference_scale 1) + euler +
    BasicScheduler normal 50 steps: the same schedule as the official KSampler (euler/normal, shift 1)."""
    s = OFFICIAL_SAMPLING
    g = wan_vap_graph(lora=False)
    del g["18"]  # the KSampler: SamplerCustomAdvanced under the same id keeps VAE Decode's link
    g["25"] = _node("VAPReferenceGuider", "VAP Reference Guider", model=["4", 0], positive=["17", 0],
                    negative=["17", 1], cfg=s["cfg"], reference_scale=REFERENCE_SCALE,
                    negative_without_reference=False, dynamic_cfg=False, zero_terminal_snr=False)
    g["26"] = _node("KSamplerSelect", "Sampler (euler)", sampler_name=s["sampler_name"])
    g["27"] = _node("BasicScheduler", "Scheduler", model=["4", 0], scheduler=s["scheduler"], steps=s["steps"],
                    denoise=1.0)
    g["24"] = _node("RandomNoise", "Noise", noise_seed=SEED)
    g["18"] = _node("SamplerCustomAdvanced", "Sampler", noise=["24", 0], guider=["25", 0], sampler=["26", 0],
                    sigmas=["27", 0], latent_image=["17", 2])
    g["30"]["inputs"]["images"] = ["19", 0]
    g["31"]["inputs"]["filename_prefix"] = "video/VAP_reference_guided"
    return g


def cog_vap_reference_graph() -> dict:
    """cog_vap_official with the VAP Reference Guider (dynamic cfg 6 as the official demo, reference_scale 1)
    in place of the VAP Dynamic CFG Guider."""
    s = COG_SAMPLING
    g = cog_vap_graph()
    del g["20"]
    g["25"] = _node("VAPReferenceGuider", "VAP Reference Guider", model=["3", 0], positive=["17", 0],
                    negative=["17", 1], cfg=s["cfg"], reference_scale=REFERENCE_SCALE,
                    negative_without_reference=False, dynamic_cfg=s["dynamic"],
                    zero_terminal_snr=s["zero_terminal_snr"])
    g["18"]["inputs"]["guider"] = ["25", 0]
    g["31"]["inputs"]["filename_prefix"] = "video/VAP_cogvideox_reference_guided"
    return g


# UI layout: column x, row y per node id (pixels), groups
COLUMNS = {0: 0, 1: 460, 2: 920, 3: 1380, 4: 1800}
COG_COLUMNS = {**COLUMNS, 4: 1900}  # the CogVideoX conditioning node is wider
WAN_LAYOUT = {
    "1": (0, 0), "20": (0, 130), "2": (0, 290), "3": (0, 400), "4": (0, 560),
    "5": (0, 700), "16": (0, 860), "10": (0, 980), "21": (0, 1100),
    "6": (1, 0), "7": (1, 260), "8": (1, 520), "9": (1, 780),
    "11": (2, 0), "15": (2, 420), "12": (2, 640), "13": (2, 1000), "14": (2, 1120),
    "17": (3, 0), "18": (3, 420),
    "19": (4, 0), "22": (4, 110), "23": (4, 220), "30": (4, 400), "31": (4, 520),
}
WAN_GROUPS = [
    ("Models", "#3f789e", ["1", "20", "2", "3", "4", "5", "16", "10", "21"]),
    ("Prompts: target and reference", "#8A8", ["6", "7", "8", "9"]),
    ("Inputs: start image and reference video", "#b58b2a", ["11", "15", "12", "13", "14"]),
    ("Sample", "#a1309b", ["17", "18"]),
    ("Decode and save", "#444", ["19", "22", "23", "30", "31"]),
]
COG_LAYOUT = {
    "1": (0, 0), "2": (0, 130), "3": (0, 240), "5": (0, 400), "16": (0, 560),
    "6": (1, 0), "7": (1, 260), "8": (1, 520), "9": (1, 780),
    "11": (2, 0), "12": (2, 420),
    "17": (3, 0), "20": (3, 520), "21": (3, 720), "22": (3, 800), "24": (3, 960), "18": (3, 1180),
    "19": (4, 0), "30": (4, 110), "31": (4, 230),
}
COG_GROUPS = [
    ("Models", "#3f789e", ["1", "2", "3", "5", "16"]),
    ("Prompts: target and reference", "#8A8", ["6", "7", "8", "9"]),
    ("Inputs: start image and reference video", "#b58b2a", ["11", "12"]),
    ("Sample: official dynamic CFG, DDIM, 50 trailing steps", "#a1309b", ["17", "20", "21", "22", "24", "18"]),
    ("Decode and save", "#444", ["19", "30", "31"]),
]

WAN_REFERENCE_LAYOUT = {**{k: v for k, v in WAN_LAYOUT.items() if k != "18"},
                        "25": (3, 420), "26": (3, 640), "27": (3, 740), "24": (3, 900), "18": (3, 1020)}
WAN_REFERENCE_GROUPS = [
    *WAN_GROUPS[:3],
    ("Sample: VAP Reference Guider (cfg 5 + reference_scale), euler, 50 steps", "#a1309b",
     ["17", "25", "26", "27", "24", "18"]),
    WAN_GROUPS[4],
]
COG_REFERENCE_LAYOUT = {**{k: v for k, v in COG_LAYOUT.items() if k != "20"}, "25": (3, 520)}
COG_REFERENCE_GROUPS = [
    *COG_GROUPS[:3],
    ("Sample: VAP Reference Guider (dynamic CFG 6 + reference_scale), DDIM, 50 trailing steps", "#a1309b",
     ["17", "25", "21", "22", "24", "18"]),
    COG_GROUPS[4],
]

# name -> (graph builder, layout, groups, columns)
WORKFLOWS = {
    "wan_vap_official": (lambda: wan_vap_graph(lora=False), WAN_LAYOUT, WAN_GROUPS, COLUMNS),
    "wan_vap_lora_upscale": (lambda: wan_vap_graph(lora=True), WAN_LAYOUT, WAN_GROUPS, COLUMNS),
    "cog_vap_official": (cog_vap_graph, COG_LAYOUT, COG_GROUPS, COG_COLUMNS),
    "wan_vap_reference_guided": (wan_vap_reference_graph, WAN_REFERENCE_LAYOUT, WAN_REFERENCE_GROUPS, COLUMNS),
    "cog_vap_reference_guided": (cog_vap_reference_graph, COG_REFERENCE_LAYOUT, COG_REFERENCE_GROUPS, COG_COLUMNS),
}
WORKFLOWS["wan_vap_long_video"] = (wan_vap_long_video_graph, {**WAN_LAYOUT, **LONG_LAYOUT_EXTRA}, LONG_GROUPS, COLUMNS)

# Since issue 10 every shipped graph encodes the reference in its own node ('VAP ... Encode Reference', node 32: ComfyUI
# serves it from its cache when only a prompt changes) and takes the video's size and length from the reference: the
# one-node conditioning (deprecated, still loaded for saved graphs) is swapped for the pair, under the same id and
# title so every link and lookup stays, and the start image's own resize node goes (the node stretches it itself).
ENCODE_ID = "32"


def with_encoded_reference(g: dict) -> dict:
    """The graph with its VAPWanConditioning / VAPCogConditioning replaced by Encode Reference + Conditioning from
    Reference (same numbers: tests/test_encode_reference.py)."""
    g = json.loads(json.dumps(g))
    cid = next(k for k, n in g.items() if n["class_type"] in ("VAPWanConditioning", "VAPCogConditioning"))
    cond = g[cid]
    i = cond["inputs"]
    loader = g[i["reference_frames"][0]]["inputs"]
    assert (loader["width"], loader["height"]) == (i["width"], i["height"]) and loader["num_frames"] <= i["length"]
    title = cond["_meta"]["title"]
    if cond["class_type"] == "VAPWanConditioning":
        start = i["start_image"]
        if g[start[0]]["class_type"] == "ImageScale":  # 'Resize start image': the new node stretches it
            resize = start[0]
            start = g[resize]["inputs"]["image"]
            del g[resize]
        g[ENCODE_ID] = _node("VAPWanEncodeReference", "Encode reference", vae=i["vae"],
                             reference_frames=i["reference_frames"], clip_vision_reference=i["clip_vision_reference"])
        g[cid] = _node("VAPWanConditioningFromReference", title, positive=i["positive"], negative=i["negative"],
                       ref_positive=i["ref_positive"], vae=i["vae"], reference=[ENCODE_ID, 0], start_image=start,
                       clip_vision_start_image=i["clip_vision_start_image"],
                       extra_frames=i["length"] - loader["num_frames"], batch_size=i["batch_size"],
                       ref_negative=i["ref_negative"])
    else:
        assert loader["num_frames"] == i["length"]
        g[ENCODE_ID] = _node("VAPCogEncodeReference", "Encode reference", vae=i["vae"],
                             reference_frames=i["reference_frames"])
        g[cid] = _node("VAPCogConditioningFromReference", title, positive=i["positive"], negative=i["negative"],
                       ref_positive=i["ref_positive"], vae=i["vae"], reference=[ENCODE_ID, 0],
                       start_image=i["start_image"], batch_size=i["batch_size"], latent_mode=i["latent_mode"],
                       seed=i["seed"], ref_negative=i["ref_negative"])
    return g


def _encoded_reference_entry(entry):
    """A WORKFLOWS entry whose graph goes through ``with_encoded_reference``; the encode node sits below the
    reference's inputs (column 2) in their group."""
    make, layout, groups, columns = entry
    bottom_id, bottom = max(((k, y) for k, (col, y) in layout.items() if col == 2), key=lambda kv: kv[1])
    bottom += 460 if bottom_id == "12" else 140  # below the reference loader's preview, or a small node
    groups = [(t, c, ids + [ENCODE_ID] if "12" in ids else ids) for t, c, ids in groups]
    return (lambda: with_encoded_reference(make()), {**layout, ENCODE_ID: (2, bottom)}, groups, columns)


WORKFLOWS = {name: _encoded_reference_entry(entry) for name, entry in WORKFLOWS.items()}

LOADERS = {"UNETLoader": "unet_name", "CLIPLoader": "clip_name", "CLIPVisionLoader": "clip_name",
           "VAELoader": "vae_name", "LoraLoaderModelOnly": "lora_name", "UpscaleModelLoader": "model_name"}


def model_of(node: dict) -> dict | None:
    """The MODELS entry (name, url, directory) a loader node of an API graph loads, if it has a download."""
    key = LOADERS.get(node["class_type"])
    name = node["inputs"].get(key) if key else None
    return next((m for m in MODELS.values() if m["name"] == name), None)


def write_api(out_dir: str = API_WORKFLOW_DIR) -> list[str]:
    paths = []
    for name, (make, *_) in WORKFLOWS.items():
        path = os.path.join(out_dir, f"{name}.api.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(make(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        paths.append(path)
    return paths


_LAYOUT_JS = r"""
async (api, layout, models, columns) => {
  const app = window.app;
  await app.loadApiJson(api, 'vap');
  const graph = app.graph;
  for (const node of graph._nodes) {
    const id = String(node.id);
    if (layout[id]) { const [col, y] = layout[id]; node.pos = [columns[col], y]; }
    if (api[id] && api[id]._meta) node.title = api[id]._meta.title;
    if (models[id]) node.properties = {...node.properties, models: [models[id]]};
    // reproducible by default: the seed stays as written (official demo seed 42), the user can switch it
    for (const w of node.widgets || []) if (w.name === 'control_after_generate') w.value = 'fixed';
  }
  graph._groups.splice(0);
  return graph.serialize();
}
"""


def add_groups(ui: dict, api: dict, groups: list, pad: int = 20, title_height: int = 50) -> None:
    """Groups around the nodes of each ``groups`` entry (bounding boxes from the serialized positions/sizes)."""
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    ui["groups"] = []
    for i, (title, color, ids) in enumerate(groups, start=1):
        members = [nodes[k] for k in ids if k in api and k in nodes]
        if not members:
            continue
        x0 = min(n["pos"][0] for n in members) - pad
        y0 = min(n["pos"][1] for n in members) - pad - title_height
        x1 = max(n["pos"][0] + n["size"][0] for n in members) + pad
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + pad
        ui["groups"].append({"id": i, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                             "font_size": 24, "flags": {}})


def write_ui(comfyui: str, out_dir: str = WORKFLOW_DIR, names: list[str] | None = None) -> list[str]:
    """The UI files of ``names`` (default: all workflows)."""
    from . import browser
    from . import client as comfy_headless
    from .demo import assets as e2e_assets
    chromium = browser.find_chromium()
    if chromium is None:
        raise SystemExit("chromium not found (apt-get install -y chromium, or set CHROMIUM)")
    import tempfile
    paths = []
    with tempfile.TemporaryDirectory(prefix="vap_build_") as base:
        # placeholder model files with the real names, so every combo offers the value the workflow uses
        for m in MODELS.values():
            os.makedirs(os.path.join(base, "models", m["directory"]), exist_ok=True)
            open(os.path.join(base, "models", m["directory"], m["name"]), "wb").close()
        for name, directory in CONVERTED.items():
            os.makedirs(os.path.join(base, "models", directory), exist_ok=True)
            open(os.path.join(base, "models", directory, name), "wb").close()
        e2e_assets.write_inputs(os.path.join(base, "input"))
        os.replace(os.path.join(base, "input", e2e_assets.INPUT_IMAGE), os.path.join(base, "input", START_IMAGE))
        os.replace(os.path.join(base, "input", e2e_assets.INPUT_VIDEO), os.path.join(base, "input", REFERENCE_VIDEO))
        server = comfy_headless.ComfyServer(comfyui, custom_node_dirs=[(PACK_DIR, "ComfyUI-VAP")],
                                            base_directory=base, cpu=True)
        with server, browser.Browser(chromium) as b:
            b.goto(f"http://{server.address}/")
            b.wait_for("window.app && window.app.graph && window.LiteGraph", timeout=120)
            for name, (make, full_layout, groups, columns) in WORKFLOWS.items():
                if names is not None and name not in names:
                    continue
                api = make()
                models = {i: model_of(n) for i, n in api.items() if model_of(n)}
                layout = {i: full_layout[i] for i in api}
                ui = b.evaluate(f"({_LAYOUT_JS})({json.dumps(api)}, {json.dumps(layout)}, {json.dumps(models)}, "
                                f"{json.dumps(columns)})")
                add_groups(ui, api, groups)
                ui.setdefault("extra", {})["ds"] = {"scale": 0.6, "offset": [40, 40]}
                path = os.path.join(out_dir, f"{name}.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(ui, f, indent=2, ensure_ascii=False)
                    f.write("\n")
                paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api-only", action="store_true", help="write only the API-format files")
    p.add_argument("--comfyui", help="ComfyUI checkout (default: COMFYUI_PATH, custom_nodes parent, ~/ComfyUI)")
    p.add_argument("--only", nargs="+", choices=sorted(WORKFLOWS), metavar="NAME",
                   help="write only these UI files (the API files are always all written)")
    args = p.parse_args(argv)
    for path in write_api():
        print("wrote", os.path.relpath(path, PACK_DIR))
    if not args.api_only:
        from .client import find_comfyui
        comfyui, _ = find_comfyui(args.comfyui)
        for path in write_ui(comfyui, names=args.only):
            print("wrote", os.path.relpath(path, PACK_DIR))


if __name__ == "__main__":
    main()
