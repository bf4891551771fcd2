"""Tiny random Wan2.1-I2V MoT checkpoints in the exact official (diffusers fork) key layout.

Used by tests and by ``--demo`` runs: real VAP weights (14B+5B) cannot be loaded everywhere, so
every code path is exercised with small seeded random weights laid out like the release.
"""
from __future__ import annotations

import torch

DEFAULT_CONFIG = {
    "_class_name": "WanTransformer3DMOTModel",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 1,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 128,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
    "block_idx_with_mot_ref": [0],
}


def _block_shapes(prefix: str, c: int, ffn: int, kv: int, suffix: str = "") -> dict[str, tuple]:
    a1, a2 = f"{prefix}attn1{suffix}", f"{prefix}attn2{suffix}"
    shapes = {
        f"{prefix}scale_shift_table{suffix}": (1, 6, c),
        f"{a1}.norm_q.weight": (c,), f"{a1}.norm_k.weight": (c,),
        f"{a2}.norm_q.weight": (c,), f"{a2}.norm_k.weight": (c,),
        f"{a2}.add_k_proj.weight": (c, kv), f"{a2}.add_k_proj.bias": (c,),
        f"{a2}.add_v_proj.weight": (c, kv), f"{a2}.add_v_proj.bias": (c,),
        f"{a2}.norm_added_k.weight": (c,),
        f"{prefix}norm2{suffix}.weight": (c,), f"{prefix}norm2{suffix}.bias": (c,),
        f"{prefix}ffn{suffix}.net.0.proj.weight": (ffn, c), f"{prefix}ffn{suffix}.net.0.proj.bias": (ffn,),
        f"{prefix}ffn{suffix}.net.2.weight": (c, ffn), f"{prefix}ffn{suffix}.net.2.bias": (c,),
    }
    for attn in (a1, a2):
        for p in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"{attn}.{p}.weight"] = (c, c)
            shapes[f"{attn}.{p}.bias"] = (c,)
    return shapes


def _embedder_shapes(prefix: str, c: int, cin: int, text: int, freq: int, img: int, patch) -> dict[str, tuple]:
    pe = prefix.replace("condition_embedder", "patch_embedding")
    return {
        f"{pe}.weight": (c, cin, *patch), f"{pe}.bias": (c,),
        f"{prefix}.time_embedder.linear_1.weight": (c, freq), f"{prefix}.time_embedder.linear_1.bias": (c,),
        f"{prefix}.time_embedder.linear_2.weight": (c, c), f"{prefix}.time_embedder.linear_2.bias": (c,),
        f"{prefix}.time_proj.weight": (6 * c, c), f"{prefix}.time_proj.bias": (6 * c,),
        f"{prefix}.text_embedder.linear_1.weight": (c, text), f"{prefix}.text_embedder.linear_1.bias": (c,),
        f"{prefix}.text_embedder.linear_2.weight": (c, c), f"{prefix}.text_embedder.linear_2.bias": (c,),
        f"{prefix}.image_embedder.norm1.weight": (img,), f"{prefix}.image_embedder.norm1.bias": (img,),
        f"{prefix}.image_embedder.ff.net.0.proj.weight": (img, img), f"{prefix}.image_embedder.ff.net.0.proj.bias": (img,),
        f"{prefix}.image_embedder.ff.net.2.weight": (c, img), f"{prefix}.image_embedder.ff.net.2.bias": (c,),
        f"{prefix}.image_embedder.norm2.weight": (c,), f"{prefix}.image_embedder.norm2.bias": (c,),
    }


def official_wan_mot_shapes(config: dict) -> dict[str, tuple]:
    """Every tensor name and shape of an official WanTransformer3DMOTModel state dict."""
    c = config["num_attention_heads"] * config["attention_head_dim"]
    ffn, kv = config["ffn_dim"], config["added_kv_proj_dim"]
    args = (c, config["in_channels"], config["text_dim"], config["freq_dim"], config["image_dim"], tuple(config["patch_size"]))
    shapes = {**_embedder_shapes("condition_embedder", *args), **_embedder_shapes("condition_embedder_mot_ref", *args)}
    # patch_embedding_mot_ref comes out of the helper as "patch_embedding_mot_ref" via the prefix rename
    for i in range(config["num_layers"]):
        shapes.update(_block_shapes(f"blocks.{i}.", c, ffn, kv))
        if i in config["block_idx_with_mot_ref"]:
            shapes.update(_block_shapes(f"blocks.{i}.", c, ffn, kv, suffix="_mot_ref"))
    out = config["out_channels"] * int(torch.tensor(config["patch_size"]).prod())
    shapes.update({"scale_shift_table": (1, 2, c), "proj_out.weight": (out, c), "proj_out.bias": (out,)})
    return shapes


def random_tensor(name: str, shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Seeded init in the spirit of the golden fixtures: norms ~1, biases small, matrices 1/sqrt(fan_in)."""
    if "norm" in name and name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("bias"):
        return 0.05 * torch.randn(shape, generator=generator)
    if "scale_shift_table" in name:
        return 0.2 * torch.randn(shape, generator=generator)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=generator) / fan_in ** 0.5


def official_wan_mot_state_dict(config: dict | None = None, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, config.json dict) of a tiny random official-layout Wan VAP transformer."""
    config = {**DEFAULT_CONFIG, **(config or {})}
    generator = torch.Generator().manual_seed(seed)
    sd = {name: random_tensor(name, shape, generator) for name, shape in sorted(official_wan_mot_shapes(config).items())}
    return sd, config
