"""CogVideoX VAP files through the real host: convert with the pack, load the base with ComfyUI's own loader."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

# a tiny CogVideoX-I2V MoT in the official layout (same geometry family as the golden models)
DEFAULT_CONFIG = {
    "_class_name": "CogVideoXTransformer3DMOTModel",
    "num_attention_heads": 2, "attention_head_dim": 64, "in_channels": 32, "out_channels": 16,
    "flip_sin_to_cos": True, "freq_shift": 0, "time_embed_dim": 24, "ofs_embed_dim": None, "text_embed_dim": 40,
    "num_layers": 3, "attention_bias": True, "sample_width": 8, "sample_height": 6, "sample_frames": 9,
    "patch_size": 2, "patch_size_t": None, "temporal_compression_ratio": 4, "max_text_seq_length": 226,
    "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875, "temporal_interpolation_scale": 1.0,
    "use_rotary_positional_embeddings": True, "use_learned_positional_embeddings": True, "patch_bias": True,
    "block_idx_with_mot_ref": [0, 1],
}


def _block_shapes(c: int, e: int, head: int, suffix: str = "") -> dict[str, tuple]:
    shapes = {}
    for norm in ("norm1", "norm2"):
        shapes.update({f"{norm}{suffix}.linear.weight": (6 * c, e), f"{norm}{suffix}.linear.bias": (6 * c,),
                       f"{norm}{suffix}.norm.weight": (c,), f"{norm}{suffix}.norm.bias": (c,)})
    for n in ("norm_q", "norm_k"):
        shapes.update({f"attn1{suffix}.{n}.weight": (head,), f"attn1{suffix}.{n}.bias": (head,)})
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        shapes.update({f"attn1{suffix}.{proj}.weight": (c, c), f"attn1{suffix}.{proj}.bias": (c,)})
    shapes.update({f"ff{suffix}.net.0.proj.weight": (4 * c, c), f"ff{suffix}.net.0.proj.bias": (4 * c,),
                   f"ff{suffix}.net.2.weight": (c, 4 * c), f"ff{suffix}.net.2.bias": (c,)})
    return shapes


def official_cog_mot_state_dict(overrides: dict | None = None, seed: int = 0):
    """(state dict with official key names, config) of a random CogVideoX-I2V MoT model."""
    cfg = {**DEFAULT_CONFIG, **(overrides or {})}
    c = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    e, t, p, cin = cfg["time_embed_dim"], cfg["text_embed_dim"], cfg["patch_size"], cfg["in_channels"]
    frames = (cfg["sample_frames"] - 1) // cfg["temporal_compression_ratio"] + 1
    rows = cfg["max_text_seq_length"] + frames * (cfg["sample_height"] // p) * (cfg["sample_width"] // p)
    embed = {"pos_embedding": (1, rows, c), "proj.weight": (c, cin, p, p), "proj.bias": (c,),
             "text_proj.weight": (c, t), "text_proj.bias": (c,)}
    if not cfg["use_learned_positional_embeddings"]:
        del embed["pos_embedding"]  # a RoPE-only model (no learned table on either patch embedding)
    time = {"linear_1.weight": (e, c), "linear_1.bias": (e,), "linear_2.weight": (e, e), "linear_2.bias": (e,)}
    shapes = {}
    for suffix in ("", "_mot_ref"):
        shapes.update({f"patch_embed{suffix}.{k}": v for k, v in embed.items()})
        shapes.update({f"time_embedding{suffix}.{k}": v for k, v in time.items()})
    for i in range(cfg["num_layers"]):
        for suffix in ("", "_mot_ref") if i in cfg["block_idx_with_mot_ref"] else ("",):
            shapes.update({f"transformer_blocks.{i}.{k}": v
                           for k, v in _block_shapes(c, e, cfg["attention_head_dim"], suffix).items()})
    shapes.update({"norm_final.weight": (c,), "norm_final.bias": (c,), "norm_out.linear.weight": (2 * c, e),
                   "norm_out.linear.bias": (2 * c,), "norm_out.norm.weight": (c,), "norm_out.norm.bias": (c,),
                   "proj_out.weight": (p * p * cfg["out_channels"], c), "proj_out.bias": (p * p * cfg["out_channels"],)})
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("pos_embedding"):
            value = torch.randn(shape, generator=g) * 0.5
            value[:, :cfg["max_text_seq_length"]] = 0  # the text part of the joint table is zero, as in the release
        elif len(shape) == 1 and (".norm" in name or "norm_" in name) and name.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            value = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            value = torch.randn(shape, generator=g) / fan_in ** 0.5
        sd[name] = value
    return sd, cfg


def write_official_folder(root: str, sd: dict, config: dict) -> str:
    """An official model folder ``root/transformer/`` (config.json + diffusion_pytorch_model.safetensors)."""
    tdir = os.path.join(root, "transformer")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "config.json"), "w") as f:
        json.dump(config, f)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(tdir, "diffusion_pytorch_model.safetensors"))
    return root


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
    expert = pack.vap_core.expert_loading.load_expert(expert_path)
    return base, expert, {"expert": expert_path, "base": base_path}


def ref_kwargs(pack, latent, context, num_refs=None):
    ca = pack.vap_core.cog_apply
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
