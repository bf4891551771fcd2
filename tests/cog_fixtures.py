"""CogVideoX VAP files through the real host: convert with the pack, load the base with ComfyUI's own loader."""
from __future__ import annotations

import os

import torch

from vap_headless.demo.official_folder import write_official_folder  # noqa: F401 (tests import it from here)
from vap_headless.demo.tiny_cog import DEFAULT_CONFIG, official_cog_mot_state_dict  # noqa: F401


def tiny_case(pack, out_dir: str, overrides: dict | None = None, seed: int = 0):
    """A tiny official CogVideoX VAP folder converted and loaded: (base, expert, config)."""
    sd, cfg = official_cog_mot_state_dict(overrides, seed)
    root = write_official_folder(os.path.join(out_dir, f"cog_vap_{seed}"), sd, cfg)
    base, expert, _ = convert_and_load(pack, root, root)
    return base, expert, cfg


def random_inputs(config: dict, frames=None, height=None, width=None, num_refs=1, batch=2, seed=1):
    """ComfyUI-layout inputs for a tiny model: x [B, C, F, H, W], t, context, ref latent/context."""
    g = torch.Generator().manual_seed(seed)
    frames = frames or (config["sample_frames"] - 1) // config["temporal_compression_ratio"] + 1
    height, width = height or config["sample_height"], width or config["sample_width"]
    c, text, dim = config["in_channels"], config["max_text_seq_length"], config["text_embed_dim"]
    return {
        "x": torch.randn(batch, c, frames, height, width, generator=g),
        "t": torch.full((batch,), 801.0),
        "context": torch.randn(batch, text, dim, generator=g),
        "ref_latent": torch.randn(batch, c, num_refs * frames, height, width, generator=g),
        "ref_context": torch.randn(batch, num_refs * text, dim, generator=g),
    }


def comfyui_holds_learned_table(table: torch.Tensor) -> bool:
    """Whether ComfyUI 0.25's own loader can load this learned positional table.

    Its CogVideoX detection reads no config, so the native model always has the table of its constructor's
    default sample size (60x90 latents, 49 frames: CogVideoX-5b-I2V), and its constructor computes a start-up
    sincos table with a 1/3 : 2/3 split that only fits widths divisible by 3. Every released CogVideoX
    passes; the tiny golden models (128 wide, 6x8x9) do not."""
    import inspect
    from comfy.ldm.cogvideo.model import CogVideoXTransformer3DModel
    d = {k: v.default for k, v in inspect.signature(CogVideoXTransformer3DModel.__init__).parameters.items()}
    frames = (d["sample_frames"] - 1) // d["temporal_compression_ratio"] + 1
    rows = d["max_text_seq_length"] + frames * (d["sample_height"] // d["patch_size"]) * (d["sample_width"] // d["patch_size"])
    return table.shape[1] == rows and table.shape[2] % 3 == 0


def load_base(path: str):
    """The native base through ComfyUI's own loader (detection, config, weights).

    For a model whose learned positional table ComfyUI cannot load (``comfyui_holds_learned_table``), the
    file's other tensors go through the same loader and the table is then put where ComfyUI keeps it for
    CogVideoX-5b-I2V (``patch_embed.pos_embedding``, learned). No ComfyUI code is replaced."""
    import comfy.sd
    import comfy.utils
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    table = sd.get("patch_embed.pos_embedding")
    if table is None or comfyui_holds_learned_table(table):
        return comfy.sd.load_diffusion_model(path)
    return load_base_state_dict(sd, metadata)


def load_base_state_dict(sd: dict, metadata: dict | None):
    """``load_base`` for a native state dict in memory (bench/bench_gpu.py builds its random weights there).
    ``sd`` loses its learned table where ComfyUI cannot load it (put back on the model, as ``load_base``)."""
    import comfy.sd
    table = sd.get("patch_embed.pos_embedding")
    if table is None or comfyui_holds_learned_table(table):
        return comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
    del sd["patch_embed.pos_embedding"]
    base = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
    patch_embed = base.model.diffusion_model.patch_embed
    patch_embed.register_buffer("pos_embedding", table.clone(), persistent=True)
    patch_embed.use_learned_positional_embeddings = True
    return base


def convert_and_load(pack, src: str, out_dir: str, dtype: str | None = None):
    """Convert ``src`` with the pack's converter; base through ComfyUI's loader, expert through the pack's.
    Returns (base ModelPatcher, VAPExpert, paths)."""
    expert_path = os.path.join(out_dir, "cog_expert.safetensors")
    base_path = os.path.join(out_dir, "cog_base.safetensors")
    pack.vap_core.convert.convert(src, expert_out=expert_path, base_out=base_path, dtype=dtype, quiet=True)
    base = load_base(base_path)
    expert = pack.vap_core.expert.loading.load_expert(expert_path)
    return base, expert, {"expert": expert_path, "base": base_path}


def ref_kwargs(pack, latent, context, num_refs=None):
    ca = pack.vap_core.cogvideox.apply
    out = {ca.REF_LATENT: latent, ca.REF_CONTEXT: context}
    if num_refs is not None:
        out[ca.REF_COUNT] = num_refs
    return out


def run_diffusion_model(patcher, x, t, context, ref: dict | None = None, callback=None):
    """Call the native CogVideoX forward with the patcher's wrappers, as the sampler does (ComfyUI layout)."""
    options = {"wrappers": patcher.wrappers}
    if callback is not None:
        options["vap_block_callback"] = callback
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context, transformer_options=options, **(ref or {}))


def official_to_comfy(video: torch.Tensor) -> torch.Tensor:
    """[B, F, C, H, W] (official) -> [B, C, F, H, W] (ComfyUI)."""
    return video.permute(0, 2, 1, 3, 4)
