"""Tiny models and inputs for running the SHIPPED workflows end to end (server tests, ``run.py --demo``).

Everything goes through the real loaders except the stand-ins of ``standin_nodes/`` (UMT5 and CLIP
vision, which have no tiny real layout):

| folder | file | made from | loaded by |
|---|---|---|---|
| diffusion_models | vap_test_wan21_i2v_base.safetensors | tiny official VAP checkpoint -> pack converter (base) | core UNETLoader |
| vap | vap_test_expert.safetensors | same checkpoint -> pack converter (expert) | VAPExpertLoader |
| vae | vap_test_wan_vae.safetensors | comfy's WanVAE class at width 8 (tiny_vae.py) | core VAELoader |
| text_encoders | vap_test_umt5.safetensors | comfy's UMT5 class, 1 layer, in-process SentencePiece | VAPTestTinyUMT5Loader |
| clip_vision | vap_test_clip_vision.safetensors | comfy's CLIP vision class, 2 layers, width 1280 | VAPTestTinyCLIPVisionLoader |
| loras | vap_test_step_lora.safetensors | rank-4 LoRA on the base's attention | core LoraLoaderModelOnly |
| upscale_models | vap_test_esrgan_x4.safetensors | spandrel ESRGAN x4, 4 filters, 1 block | core UpscaleModelLoader |

CogVideoX (``COG_MODEL_FILES``, :func:`write_cog_models`):

| folder | file | made from | loaded by |
|---|---|---|---|
| diffusion_models | vap_test_cogvideox_i2v_base.safetensors | tiny official CogVideoX-I2V MoT (RoPE only, head dim 64) -> pack converter (base) | core UNETLoader |
| vap | vap_test_cog_expert.safetensors | same checkpoint -> pack converter (expert) | VAPExpertLoader |
| vae | vap_test_cog_vae.safetensors | comfy's CogVideoX VAE class at its fixed default width, fp16 (~431 MB) | core VAELoader |
| text_encoders | vap_test_t5.safetensors | comfy's T5 class, 1 layer, width TINY_T5_DIM, shipped T5 tokenizer | VAPTestTinyT5Loader |

Needs the host on sys.path with ``args.cpu`` set (``host.import_host()`` or :func:`import_comfy`).
Weights are seeded random: every output is noise.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch

from .. import client as headless_client

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))
STANDIN_NODES_DIR = os.path.join(DEMO_DIR, "standin_nodes")  # loaded as a custom-node folder by demo/test servers

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
COG_MODEL_FILES = {
    "diffusion_models": "vap_test_cogvideox_i2v_base.safetensors",
    "vap": "vap_test_cog_expert.safetensors",
    "vae": "vap_test_cog_vae.safetensors",
    "text_encoders": "vap_test_t5.safetensors",
}
# official config values of the tiny CogVideoX-I2V VAP checkpoint (on top of tiny_cog.DEFAULT_CONFIG), chosen
# so that core's UNETLoader loads the converted base as it is: no learned positional table (ComfyUI's detection
# keeps its 60x90x49 table otherwise), head dim 64 (assumed by the detection); text width = the tiny T5's
# (filled in by cog_config_overrides); sample size = TINY_SIZE's latent (the RoPE base grid)
COG_CONFIG = {
    "use_learned_positional_embeddings": False, "use_rotary_positional_embeddings": True,
    "num_attention_heads": 2, "attention_head_dim": 64, "num_layers": 3, "block_idx_with_mot_ref": [0, 2],
    "sample_width": TINY_SIZE[0] // 8, "sample_height": TINY_SIZE[1] // 8, "sample_frames": TINY_SIZE[2],
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
COG_STANDIN_FOR = {"CLIPLoader": "VAPTestTinyT5Loader"}
COG_NODES = ("VAPCogConditioning", "VAPCogConditioningFromReference")  # a workflow holding one is a CogVideoX one


def import_comfy(comfyui: str) -> None:
    """Put ComfyUI on sys.path in CPU mode (for building the tiny files in this process)."""
    if comfyui not in sys.path:
        sys.path.insert(0, comfyui)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401


def _standins():
    """The stand-in builders (import ComfyUI: call after :func:`import_comfy`)."""
    from .standin_nodes import standins
    return standins


def write_models(models_dir: str, seed: int = 0) -> dict[str, str]:
    """Write every tiny model into ``models_dir/<folder>/``; returns {folder: file name}."""
    from safetensors.torch import save_file
    paths = {}
    for folder, name in MODEL_FILES.items():
        os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
        paths[folder] = os.path.join(models_dir, folder, name)

    # base + expert: a tiny checkpoint in the official layout through the pack's converter
    from vap_core import convert
    from .official_folder import write_official_folder
    from .tiny_wan import official_wan_mot_state_dict
    sd, config = official_wan_mot_state_dict(seed=seed)
    with tempfile.TemporaryDirectory(prefix="vap_tiny_official_") as root:
        write_official_folder(root, sd, config)
        convert.convert(root, expert_out=paths["vap"], base_out=paths["diffusion_models"], dtype="fp16", quiet=True)

    # VAE: small-width real Wan 2.1 layout
    from .tiny_vae import make_tiny_wan_vae_state_dict
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


def cog_config_overrides() -> dict:
    """``COG_CONFIG`` with the text width of the tiny T5 stand-in."""
    return {**COG_CONFIG, "text_embed_dim": _standins().TINY_T5_DIM}


def write_cog_models(models_dir: str, seed: int = 0) -> dict[str, str]:
    """Write the tiny CogVideoX VAP models into ``models_dir/<folder>/``; returns {folder: file name}."""
    from safetensors.torch import save_file
    paths = {}
    for folder, name in COG_MODEL_FILES.items():
        os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
        paths[folder] = os.path.join(models_dir, folder, name)
    from vap_core import convert
    from .official_folder import write_official_folder
    from .tiny_cog import official_cog_mot_state_dict
    from .tiny_vae import make_tiny_cog_vae_state_dict

    # base + expert: a tiny official CogVideoX-I2V MoT checkpoint through the pack's converter
    sd, config = official_cog_mot_state_dict(cog_config_overrides(), seed=seed)
    with tempfile.TemporaryDirectory(prefix="vap_tiny_official_cog_") as root:
        write_official_folder(root, sd, config)
        convert.convert(root, expert_out=paths["vap"], base_out=paths["diffusion_models"], dtype="fp16", quiet=True)

    save_file(make_tiny_cog_vae_state_dict(seed=seed), paths["vae"])
    _standins().write_tiny_t5(paths["text_encoders"], seed=seed)
    return dict(COG_MODEL_FILES)


def is_cog_prompt(prompt: dict) -> bool:
    return any(node.get("class_type") in COG_NODES for node in prompt.values())


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
                image: str = INPUT_IMAGE, video: str = INPUT_VIDEO, variant: str | None = None) -> dict:
    """A shipped API workflow with only file names and sizes changed (+ the stand-in loaders swapped in
    by ``class_type``; their inputs are the core loaders').

    ``variant``: ``"wan"`` or ``"cog"``; None: ``"cog"`` when the workflow holds a ``COG_NODES`` node. A Cog
    workflow gets the ``COG_MODEL_FILES`` (``MODEL_FILES`` for the folders it lacks) and the tiny T5 loader."""
    if variant is None:
        variant = "cog" if is_cog_prompt(prompt) else "wan"
    if variant not in ("wan", "cog"):
        raise ValueError(f"variant must be 'wan' or 'cog', got {variant!r}")
    files = {**MODEL_FILES, **COG_MODEL_FILES} if variant == "cog" else MODEL_FILES
    standin_for = {**STANDIN_FOR, **COG_STANDIN_FOR} if variant == "cog" else STANDIN_FOR
    w, h, n = TINY_SIZE
    out = headless_client.resize_workflow(prompt, width or w, height or h, length or n)
    for node in out.values():
        cls = node["class_type"]
        if cls in LOADER_INPUTS:
            key, folder = LOADER_INPUTS[cls]
            node["inputs"][key] = files[folder]
        if cls in standin_for:
            node["class_type"] = standin_for[cls]
        if cls == "LoadImage":
            node["inputs"]["image"] = image
        if cls == "VAPLoadReferenceVideo":
            node["inputs"]["file"] = video
    return out


def make_base_directory(base: str, seed: int = 0, cog: bool = True) -> dict:
    """A ComfyUI ``--base-directory`` with tiny models in models/ (Wan and, unless ``cog=False``, CogVideoX) and
    the inputs in input/."""
    models = write_models(os.path.join(base, "models"), seed=seed)
    out = {"models": models}
    if cog:
        out["cog_models"] = write_cog_models(os.path.join(base, "models"), seed=seed)
    out["inputs"] = write_inputs(os.path.join(base, "input"))
    for sub in ("output", "temp", "user", "custom_nodes"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    return out
