"""Wan2.1 key names: official diffusers layout -> ComfyUI's native Wan layout.

ComfyUI has no converter for diffusers-layout Wan checkpoints, so the pack maps them itself.

Expert (``*_mot_ref``) tensors use the *same* native names as the base module they mirror, after
removing ``_mot_ref``: ``blocks.0.attn1_mot_ref.to_q.weight`` -> ``blocks.0.self_attn.q.weight``,
``condition_embedder_mot_ref.time_embedder.linear_1.weight`` -> ``time_embedding.0.weight``. An expert
file is therefore a partial native Wan state dict (embeddings + the expert blocks) and the expert is
built from ComfyUI's own ``WanAttentionBlock`` / ``MLPProj`` classes.
"""
from __future__ import annotations

from ..formats.key_rules import KeyRules

# (official regex, native template). Order matters only for readability: patterns are anchored.
_RULES = [
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
    (r"condition_embedder\.time_embedder\.linear_1\.(weight|bias)", r"time_embedding.0.\1"),
    (r"condition_embedder\.time_embedder\.linear_2\.(weight|bias)", r"time_embedding.2.\1"),
    (r"condition_embedder\.time_proj\.(weight|bias)", r"time_projection.1.\1"),
    (r"condition_embedder\.text_embedder\.linear_1\.(weight|bias)", r"text_embedding.0.\1"),
    (r"condition_embedder\.text_embedder\.linear_2\.(weight|bias)", r"text_embedding.2.\1"),
    (r"condition_embedder\.image_embedder\.norm1\.(weight|bias)", r"img_emb.proj.0.\1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.0\.proj\.(weight|bias)", r"img_emb.proj.1.\1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.2\.(weight|bias)", r"img_emb.proj.3.\1"),
    (r"condition_embedder\.image_embedder\.norm2\.(weight|bias)", r"img_emb.proj.4.\1"),
    (r"condition_embedder\.image_embedder\.pos_embed", r"img_emb.emb_pos"),
    (r"blocks\.(\d+)\.attn1\.to_q\.(weight|bias)", r"blocks.\1.self_attn.q.\2"),
    (r"blocks\.(\d+)\.attn1\.to_k\.(weight|bias)", r"blocks.\1.self_attn.k.\2"),
    (r"blocks\.(\d+)\.attn1\.to_v\.(weight|bias)", r"blocks.\1.self_attn.v.\2"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.self_attn.o.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_q\.weight", r"blocks.\1.self_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn1\.norm_k\.weight", r"blocks.\1.self_attn.norm_k.weight"),
    (r"blocks\.(\d+)\.attn2\.to_q\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (r"blocks\.(\d+)\.attn2\.to_k\.(weight|bias)", r"blocks.\1.cross_attn.k.\2"),
    (r"blocks\.(\d+)\.attn2\.to_v\.(weight|bias)", r"blocks.\1.cross_attn.v.\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.o.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_q\.weight", r"blocks.\1.cross_attn.norm_q.weight"),
    (r"blocks\.(\d+)\.attn2\.norm_k\.weight", r"blocks.\1.cross_attn.norm_k.weight"),
    (r"blocks\.(\d+)\.attn2\.add_k_proj\.(weight|bias)", r"blocks.\1.cross_attn.k_img.\2"),
    (r"blocks\.(\d+)\.attn2\.add_v_proj\.(weight|bias)", r"blocks.\1.cross_attn.v_img.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_added_k\.weight", r"blocks.\1.cross_attn.norm_k_img.weight"),
    # diffusers norm2 is the (affine) cross-attention norm, ComfyUI calls it norm3
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"blocks.\1.norm3.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.(weight|bias)", r"blocks.\1.ffn.0.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.2\.(weight|bias)", r"blocks.\1.ffn.2.\2"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.modulation"),
    (r"scale_shift_table", r"head.modulation"),
    (r"proj_out\.(weight|bias)", r"head.head.\1"),
]
# Official keys that carry nothing ComfyUI uses (diffusers ignores them on load as well).
RULES = KeyRules("Wan", "WanTransformer3DMOTModel", _RULES, is_expert=lambda key: "_mot_ref" in key,
                 ignored=r"blocks\.\d+\.attn2\.norm_added_q\.weight")
native_name = RULES.native_name
split_and_map = RULES.split_and_map


def native_transformer_config(config: dict) -> dict:
    """The ``transformer`` dict ComfyUI's Wan detection reads from safetensors metadata.

    Only what detection cannot infer from shapes (head count, text width)."""
    out = {}
    if "num_attention_heads" in config:
        out["num_heads"] = int(config["num_attention_heads"])
    if "text_dim" in config:
        out["text_dim"] = int(config["text_dim"])
    if "freq_dim" in config:
        out["freq_dim"] = int(config["freq_dim"])
    if "eps" in config:
        out["eps"] = float(config["eps"])
    return out
