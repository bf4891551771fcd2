"""CogVideoX key map: official names -> exactly the names ComfyUI's native CogVideoX uses."""
import json

import pytest
import torch

from cog_fixtures import official_cog_mot_state_dict
from vap_core.cogvideox import keys as cog_keys
CONFIG = {"num_attention_heads": 3, "num_layers": 3, "block_idx_with_mot_ref": [0, 2]}


def test_expert_names_are_their_base_twins():
    sd, _ = official_cog_mot_state_dict(CONFIG)
    base, expert = cog_keys.split_and_map(sd)
    assert len(base) + len(expert) == len(sd)
    assert all("_mot_ref" not in k for k in base.values()) and all("_mot_ref" in k for k in expert.values())
    for native, official in expert.items():
        assert base[native] == official.replace("_mot_ref", "")
    assert cog_keys.expert_map(sd) == expert


def test_unknown_tensor_is_named():
    with pytest.raises(KeyError, match="unknown CogVideoX tensor 'transformer_blocks.0.attn1.to_qkv.weight'"):
        cog_keys.split_and_map(["transformer_blocks.0.attn1.to_qkv.weight"])


def test_base_metadata_carries_what_detection_cannot_infer():
    _, cfg = official_cog_mot_state_dict(CONFIG)
    meta = json.loads(cog_keys.base_metadata(cfg)["config"])["transformer"]
    assert meta["use_rotary_positional_embeddings"] is True and meta["use_learned_positional_embeddings"] is True
    assert (meta["sample_height"], meta["sample_width"], meta["sample_frames"]) == (6, 8, 9)
    assert "block_idx_with_mot_ref" not in meta and "_class_name" not in meta


def test_base_names_are_comfyuis(pack):
    """Every mapped base name is a parameter or persistent buffer of ComfyUI's CogVideoXTransformer3DModel
    of that config, and nothing it has is left out (built on the meta device: no memory, no start-up table)."""
    from comfy.ldm.cogvideo.model import CogVideoXTransformer3DModel
    import comfy.ops
    sd, cfg = official_cog_mot_state_dict(CONFIG)
    base, _ = cog_keys.split_and_map(sd)
    with torch.device("meta"):
        native = CogVideoXTransformer3DModel(
            num_attention_heads=cfg["num_attention_heads"], attention_head_dim=cfg["attention_head_dim"],
            in_channels=cfg["in_channels"], time_embed_dim=cfg["time_embed_dim"], text_embed_dim=cfg["text_embed_dim"],
            num_layers=cfg["num_layers"], sample_width=cfg["sample_width"], sample_height=cfg["sample_height"],
            sample_frames=cfg["sample_frames"], use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True, operations=comfy.ops.disable_weight_init)
    shapes = {k: tuple(v.shape) for k, v in native.state_dict().items()}
    assert set(base) == set(shapes)
    assert all(tuple(sd[base[k]].shape) == shapes[k] for k in base)
