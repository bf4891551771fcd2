"""Tiny models and inputs for running the SHIPPED workflows end to end (server tests, ``run.py --demo``).

Everything goes through the real loaders except the two stand-ins of ``comfy_test_nodes`` (UMT5 and CLIP
vision, which have no tiny real layout):

| folder | file | made from | loaded by |
|---|---|---|---|
| diffusion_models | vap_test_wan21_i2v_base.safetensors | tiny official VAP checkpoint -> pack converter (base) | core UNETLoader |
| vap | vap_test_expert.safetensors | same checkpoint -> pack converter (expert) | VAPExpertLoader |
| vae | vap_test_wan_vae.safetensors | comfy's WanVAE class at width 8 (tests/tiny_models.py) | core VAELoader |
| text_encoders | vap_test_umt5.safetensors | comfy's UMT5 class, 1 layer, in-process SentencePiece | VAPTestTinyUMT5Loader |
| clip_vision | vap_test_clip_vision.safetensors | comfy's CLIP vision class, 2 layers, width 1280 | VAPTestTinyCLIPVisionLoader |
| loras | vap_test_step_lora.safetensors | rank-4 LoRA on the base's attention | core LoraLoaderModelOnly |
| upscale_models | vap_test_esrgan_x4.safetensors | spandrel ESRGAN x4, 4 filters, 1 block | core UpscaleModelLoader |

Needs the host on sys.path with ``args.cpu`` set (``host.import_host()`` or :func:`import_comfy`).
Weights are seeded random: every output is noise.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(TESTS)
TEST_NODES_DIR = os.path.join(TESTS, "comfy_test_nodes")

TINY_SIZE = (64, 48, 9)  # width, height, frames: latent 8x6x3, 12 target tokens per latent frame

MODEL_FILES = {
    "diffusion_models": "vap_test_wan21_i2v_base.safetensors",
    "vap": "vap_test_expert.safetensors",
    "vae": "vap_test_wan_vae.safetensors",
    "text_encoders": "vap_test_umt5.safetensors",
    "clip_vision": "vap_test_clip_vision.safetensors",
    "loras": "vap_test_step_lora.safetensors",
    "upscale_models": "vap_test_esrgan_x4.safetensors",
}
INPUT_IMAGE = "vap_test_start.png"
INPUT_VIDEO = "vap_test_reference.mp4"

# loader class_type -> (input name, models folder); the stand-ins take the core loader's inputs
LOADER_INPUTS = {
    "UNETLoader": ("unet_name", "diffusion_models"),
    "VAPExpertLoader": ("expert_name", "vap"),
    "VAELoader": ("vae_name", "vae"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "CLIPVisionLoader": ("clip_name", "clip_vision"),
    "LoraLoaderModelOnly": ("lora_name", "loras"),
    "UpscaleModelLoader": ("model_name", "upscale_models"),
}
STANDIN_FOR = {"CLIPLoader": "VAPTestTinyUMT5Loader", "CLIPVisionLoader": "VAPTestTinyCLIPVisionLoader"}


def import_comfy(comfyui: str) -> None:
    """Put ComfyUI on sys.path in CPU mode (for building the tiny files in this process)."""
    if comfyui not in sys.path:
        sys.path.insert(0, comfyui)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401


def _pack_module(name: str):
    """``vap_core.<name>`` of this checkout (format modules: no ComfyUI import)."""
    if PACK_DIR not in sys.path:
        sys.path.insert(0, PACK_DIR)
    import importlib
    return importlib.import_module(f"vap_core.{name}")


def headless():
    """``workflows/comfy_headless.py`` (server + client helpers shared with the runner)."""
    workflows = os.path.join(PACK_DIR, "workflows")
    if workflows not in sys.path:
        sys.path.insert(0, workflows)
    import comfy_headless
    return comfy_headless


def _standins():
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from comfy_test_nodes import standins
    return standins


def write_models(models_dir: str, seed: int = 0) -> dict[str, str]:
    """Write every tiny model into ``models_dir/<folder>/``; returns {folder: file name}."""
    from safetensors.torch import save_file
    paths = {}
    for folder, name in MODEL_FILES.items():
        os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
        paths[folder] = os.path.join(models_dir, folder, name)

    # base + expert: a tiny checkpoint in the official layout through the pack's converter
    tiny_wan = _pack_module("tiny_wan")
    convert = _pack_module("convert")
    sd, config = tiny_wan.official_wan_mot_state_dict(seed=seed)
    with tempfile.TemporaryDirectory(prefix="vap_tiny_official_") as root:
        official = os.path.join(root, "transformer")
        os.makedirs(official)
        with open(os.path.join(official, "config.json"), "w") as f:
            json.dump(config, f)
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(official, "diffusion_pytorch_model.safetensors"))
        convert.convert(root, expert_out=paths["vap"], base_out=paths["diffusion_models"], dtype="fp16", quiet=True)

    # VAE: small-width real Wan 2.1 layout (the other agent's helper)
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from tiny_models import make_tiny_wan_vae_state_dict
    save_file(make_tiny_wan_vae_state_dict(dim=8, seed=seed), paths["vae"])

    standins = _standins()
    standins.write_tiny_umt5(paths["text_encoders"], seed=seed)
    standins.write_tiny_clip_vision(paths["clip_vision"], seed=seed)

    # LoRA on the base attention (same key style as the lightx2v step-distill LoRA: diffusion_model.*.lora_*)
    g = torch.Generator().manual_seed(seed + 1)
    dim, rank, lora = config["num_attention_heads"] * config["attention_head_dim"], 4, {}
    for i in range(config["num_layers"]):
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                key = f"diffusion_model.blocks.{i}.{attn}.{proj}"
                lora[f"{key}.lora_down.weight"] = (torch.randn(rank, dim, generator=g) / dim ** 0.5).half()
                lora[f"{key}.lora_up.weight"] = (0.1 * torch.randn(dim, rank, generator=g)).half()
                lora[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    save_file(lora, paths["loras"])

    # upscale model: a tiny ESRGAN x4 in spandrel's layout (what RealESRGAN_x4plus is)
    from spandrel.architectures.ESRGAN import ESRGAN
    torch.manual_seed(seed)
    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=4, num_blocks=1, scale=4)
    save_file({k: v.detach().contiguous() for k, v in esrgan.state_dict().items()}, paths["upscale_models"])
    return dict(MODEL_FILES)


def write_inputs(input_dir: str, frames: int = 12, size: tuple[int, int] = (96, 64), fps: int = 16) -> dict[str, str]:
    """A start image (PNG) and a short reference clip (H.264 mp4) in ``input_dir``."""
    import av
    from PIL import Image
    os.makedirs(input_dir, exist_ok=True)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(input_dir, INPUT_IMAGE))
    with av.open(os.path.join(input_dir, INPUT_VIDEO), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[..., 2] = 40
            x0 = (i * 6) % (w - 16)
            frame[h // 4: h // 4 + 16, x0: x0 + 16] = (250, 200, 30)  # a square moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"image": INPUT_IMAGE, "video": INPUT_VIDEO}


def tiny_prompt(prompt: dict, width: int | None = None, height: int | None = None, length: int | None = None,
                image: str = INPUT_IMAGE, video: str = INPUT_VIDEO) -> dict:
    """A shipped API workflow with only file names and sizes changed (+ the two stand-in loaders swapped in
    by ``class_type``; their inputs are the core loaders')."""
    comfy_headless = headless()
    w, h, n = TINY_SIZE
    out = comfy_headless.resize_workflow(prompt, width or w, height or h, length or n)
    for node in out.values():
        cls = node["class_type"]
        if cls in LOADER_INPUTS:
            key, folder = LOADER_INPUTS[cls]
            node["inputs"][key] = MODEL_FILES[folder]
        if cls in STANDIN_FOR:
            node["class_type"] = STANDIN_FOR[cls]
        if cls == "LoadImage":
            node["inputs"]["image"] = image
        if cls == "VAPLoadReferenceVideo":
            node["inputs"]["file"] = video
    return out


def make_base_directory(base: str, seed: int = 0) -> dict:
    """A ComfyUI ``--base-directory`` with tiny models in models/ and the inputs in input/."""
    models = write_models(os.path.join(base, "models"), seed=seed)
    inputs = write_inputs(os.path.join(base, "input"))
    for sub in ("output", "temp", "user", "custom_nodes"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    return {"models": models, "inputs": inputs}
