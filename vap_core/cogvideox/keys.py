"""CogVideoX key names: official diffusers layout -> ComfyUI's native CogVideoX layout (ComfyUI >= 0.25).

ComfyUI's native ``comfy/ldm/cogvideo/model.py`` keeps the diffusers names for the embeddings and the
output head (``patch_embed.*``, ``norm_final``, ``norm_out``, ``proj_out``) but flattens the blocks and
the time embedding: ``transformer_blocks.N.attn1.to_q`` -> ``blocks.N.q``, ``attn1.to_out.0`` ->
``attn_out``, ``ff.net.0.proj`` -> ``ff_proj``, ``ff.net.2`` -> ``ff_out``,
``time_embedding.linear_1`` -> ``time_embedding_linear_1``. Core has no converter for diffusers-layout
CogVideoX files, so the pack maps them itself.

Expert (``*_mot_ref``) tensors use the *same* native names as the base module they mirror, after
removing ``_mot_ref``: ``transformer_blocks.0.attn1_mot_ref.to_q.weight`` -> ``blocks.0.q.weight``,
``patch_embed_mot_ref.pos_embedding`` -> ``patch_embed.pos_embedding``,
``time_embedding_mot_ref.linear_1.weight`` -> ``time_embedding_linear_1.weight``. The optional
``ref_embeddings.ref_K`` / ``effect_embeddings.TYPE`` parameters (trainable expert parameters without
``_mot_ref`` in their name; absent from the repo's configs) keep their names and go to the expert.
"""
from __future__ import annotations

import json

from ..formats.key_rules import KeyRules

_RULES = [
    (r"patch_embed\.(proj|text_proj)\.(weight|bias)", r"patch_embed.\1.\2"),
    (r"patch_embed\.pos_embedding", r"patch_embed.pos_embedding"),
    (r"time_embedding\.linear_([12])\.(weight|bias)", r"time_embedding_linear_\1.\2"),
    (r"ofs_embedding\.linear_([12])\.(weight|bias)", r"ofs_embedding_linear_\1.\2"),
    (r"transformer_blocks\.(\d+)\.(norm1|norm2)\.(linear|norm)\.(weight|bias)", r"blocks.\1.\2.\3.\4"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_([qk])\.(weight|bias)", r"blocks.\1.norm_\2.\3"),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn_out.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(weight|bias)", r"blocks.\1.ff_proj.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(weight|bias)", r"blocks.\1.ff_out.\2"),
    (r"norm_final\.(weight|bias)", r"norm_final.\1"),
    (r"norm_out\.(linear|norm)\.(weight|bias)", r"norm_out.\1.\2"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
    (r"(ref_embeddings|effect_embeddings)\.([A-Za-z0-9_\-]+)", r"\1.\2"),
]

# Constructor arguments of ComfyUI's CogVideoXTransformer3DModel that its detection cannot read from tensor
# shapes (it assumes head dim 64 and the 60x90x49 sample size, and switches RoPE off whenever a learned
# positional table exists), copied from the official config.
_PASSED_THROUGH = (
    "num_attention_heads", "attention_head_dim", "out_channels", "flip_sin_to_cos", "freq_shift",
    "sample_width", "sample_height", "sample_frames", "temporal_compression_ratio", "max_text_seq_length",
    "spatial_interpolation_scale", "temporal_interpolation_scale", "use_rotary_positional_embeddings",
    "use_learned_positional_embeddings", "patch_bias",
)


def is_expert_key(key: str) -> bool:
    return "_mot_ref" in key or key.startswith(("ref_embeddings.", "effect_embeddings."))


RULES = KeyRules("CogVideoX", "CogVideoXTransformer3DMOTModel", _RULES, is_expert=is_expert_key)
native_name = RULES.native_name
split_and_map = RULES.split_and_map


def expert_map(keys) -> dict[str, str]:
    """{native expert name: official key} for the expert tensors only."""
    return split_and_map(keys)[1]


def native_transformer_config(config: dict) -> dict:
    """The ``transformer`` dict of the base file's ``config`` metadata: the official values ComfyUI's
    CogVideoX detection cannot infer. ComfyUI 0.25 reads this metadata for Wan but not (yet) for CogVideoX,
    so today it documents the file; the pack's VAP path never depends on it (docs/COGVIDEOX.md)."""
    return {k: config[k] for k in _PASSED_THROUGH if k in config and config[k] is not None}


def base_metadata(config: dict) -> dict[str, str]:
    """safetensors metadata for a native base file: ``{"config": '{"transformer": {...}}'}``."""
    return {"config": json.dumps({"transformer": native_transformer_config(config)}, sort_keys=True)}
