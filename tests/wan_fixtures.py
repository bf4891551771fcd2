"""Tiny Wan VAP checkpoints on disk in the official layouts, and loading them through the real host."""
from __future__ import annotations

import os

import torch

from vap_headless.demo.official_folder import write_official_folder  # noqa: F401 (tests import it from here)


def convert_and_load(pack, src: str, out_dir: str, dtype: str | None = None):
    """Convert ``src`` with the pack's converter, load the base with ComfyUI's own loader and the expert
    with the pack's loader. Returns (base ModelPatcher, VAPExpert, paths)."""
    import comfy.sd
    convert = pack.vap_core.convert.convert
    expert_path = os.path.join(out_dir, "expert.safetensors")
    base_path = os.path.join(out_dir, "base.safetensors")
    convert(src, expert_out=expert_path, base_out=base_path, dtype=dtype, quiet=True)
    base = comfy.sd.load_diffusion_model(base_path)
    expert = pack.vap_core.expert.loading.load_expert(expert_path)
    return base, expert, {"expert": expert_path, "base": base_path}


def ref_kwargs(pack, latent, context, clip):
    wa = pack.vap_core.wan.apply
    return {wa.REF_LATENT: latent, wa.REF_CONTEXT: context, wa.REF_CLIP: clip}


def run_diffusion_model(patcher, x, t, context, clip_fea, ref: dict | None = None, callback=None):
    """Call the native WanModel forward with the patcher's wrappers, as the sampler does."""
    options = {"wrappers": patcher.wrappers}
    if callback is not None:
        options["vap_block_callback"] = callback
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context, clip_fea=clip_fea, transformer_options=options, **(ref or {}))


def random_inputs(config: dict, frames=2, height=4, width=6, ref_frames=None, seed=1, batch=1):
    g = torch.Generator().manual_seed(seed)
    c_in, text_dim = config["in_channels"], config["text_dim"]
    ref_frames = ref_frames or frames
    return {
        "x": torch.randn(batch, c_in, frames, height, width, generator=g),
        "t": torch.full((batch,), 700.0),
        "context": torch.randn(batch, 512, text_dim, generator=g),
        "clip": torch.randn(batch, 257, config["image_dim"], generator=g),
        "ref_latent": torch.randn(batch, c_in, ref_frames, height, width, generator=g),
        "ref_context": torch.randn(batch, 512, text_dim, generator=g),
        "ref_clip": torch.randn(batch, 257, config["image_dim"], generator=g),
    }
