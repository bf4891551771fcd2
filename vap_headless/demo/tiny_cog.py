"""A tiny random CogVideoX-I2V VAP (MoT) checkpoint in the official key layout and config."""
from __future__ import annotations

import torch

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


def official_cog_mot_shapes(cfg: dict) -> dict[str, tuple]:
    """Every tensor name and shape of an official CogVideoXTransformer3DMOTModel state dict with config ``cfg``
    (also used at release size by bench/bench_convert_fullsize.py, where no tensor is ever allocated)."""
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
    return shapes


def official_cog_mot_state_dict(overrides: dict | None = None, seed: int = 0):
    """(state dict with official key names, config) of a random CogVideoX-I2V MoT model."""
    cfg = {**DEFAULT_CONFIG, **(overrides or {})}
    shapes = official_cog_mot_shapes(cfg)
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
