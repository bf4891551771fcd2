"""Bad input gets an error naming the problem and the fix, and nothing is written."""
import os

import pytest
import torch
from safetensors.torch import save_file

import host
from vap_core import convert as convert_mod
from vap_core.errors import VAPFormatError
from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
from wan_fixtures import convert_and_load, write_official_folder

CONFIG = {"num_layers": 2, "block_idx_with_mot_ref": [0], "text_dim": 32, "ffn_dim": 64}


def _convert_fails(src, tmp_path, match):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(VAPFormatError, match=match):
        convert_mod.convert(str(src), expert_out=str(out / "e.safetensors"), base_out=str(out / "b.safetensors"), quiet=True)
    assert os.listdir(out) == []


def test_folder_without_transformer(tmp_path):
    (tmp_path / "model").mkdir()
    _convert_fails(tmp_path / "model", tmp_path, "no 'transformer/' folder")


def test_truncated_safetensors(tmp_path):
    sd, cfg = official_wan_mot_state_dict(CONFIG)
    root = write_official_folder(str(tmp_path / "vap"), sd, cfg)
    f = os.path.join(root, "transformer", "diffusion_pytorch_model.safetensors")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    _convert_fails(root, tmp_path, "truncated.*Download it again")


def test_not_safetensors_at_all(tmp_path):
    bad = tmp_path / "vap.safetensors"
    bad.write_bytes(b"PK\x03\x04 this is a zip / pickle")
    _convert_fails(bad, tmp_path, "not a readable safetensors")


def test_pickle_only_folder(tmp_path):
    tdir = tmp_path / "vap" / "transformer"
    tdir.mkdir(parents=True)
    (tdir / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    _convert_fails(tmp_path / "vap", tmp_path, "safetensors only")


def test_plain_base_is_not_a_vap_checkpoint(tmp_path):
    sd, cfg = official_wan_mot_state_dict(CONFIG)
    base_only = {k: v for k, v in sd.items() if "_mot_ref" not in k}
    f = tmp_path / "wan_base.safetensors"
    save_file(base_only, str(f))
    _convert_fails(f, tmp_path, "no Video-As-Prompt expert.*Load Diffusion Model")


def test_missing_shard(tmp_path):
    sd, cfg = official_wan_mot_state_dict(CONFIG)
    root = write_official_folder(str(tmp_path / "vap"), sd, cfg, shards=2)
    os.remove(os.path.join(root, "transformer", "diffusion_pytorch_model-00002-of-00002.safetensors"))
    _convert_fails(root, tmp_path, "missing shard")


# ---- model mismatches (real host) -------------------------------------------------------------------

def _expert(pack, tmp_path, overrides, seed=0):
    sd, cfg = official_wan_mot_state_dict({**CONFIG, **overrides}, seed=seed)
    root = write_official_folder(str(tmp_path / f"vap{seed}"), sd, cfg)
    return convert_and_load(pack, root, str(tmp_path), dtype=None)


def test_expert_wider_than_base(pack, tmp_path):
    base, _, _ = _expert(pack, tmp_path, {}, seed=0)
    _, wide_expert, _ = _expert(pack, tmp_path, {"num_attention_heads": 2, "added_kv_proj_dim": 256}, seed=1)
    with pytest.raises(pack.vap_core.errors.VAPModelMismatch, match="Wan 1.3B.*Wan2.1-I2V-14B"):
        pack.vap_core.expert.loading.apply_expert(base, wide_expert)


def test_expert_deeper_than_base(pack, tmp_path):
    base, _, _ = _expert(pack, tmp_path, {}, seed=0)
    _, deep_expert, _ = _expert(pack, tmp_path, {"num_layers": 4, "block_idx_with_mot_ref": [3]}, seed=1)
    with pytest.raises(pack.vap_core.errors.VAPModelMismatch, match="does not match the base"):
        pack.vap_core.expert.loading.apply_expert(base, deep_expert)


def test_text_to_video_base(pack, tmp_path):
    import comfy.sd
    from vap_core.wan import keys as wan_keys
    _, expert, _ = _expert(pack, tmp_path, {}, seed=0)
    sd, cfg = official_wan_mot_state_dict({**CONFIG, "in_channels": 16}, seed=2)
    base_map, _ = wan_keys.split_and_map(sd)
    t2v = {n: sd[o] for n, o in base_map.items() if not n.startswith("img_emb.")}
    path = str(tmp_path / "wan_t2v.safetensors")
    save_file(t2v, path, metadata={"config": '{"transformer": {"text_dim": 32}}'})
    base = comfy.sd.load_diffusion_model(path)
    with pytest.raises(pack.vap_core.errors.VAPModelMismatch, match="text-to-video.*I2V"):
        pack.vap_core.expert.loading.apply_expert(base, expert)


def test_non_vap_file_in_expert_loader(pack, tmp_path):
    f = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(f))
    with pytest.raises(pack.vap_core.errors.VAPFormatError, match="not a Video-As-Prompt expert.*models/vap"):
        pack.vap_core.expert.loading.load_expert(str(f))


COG_CASES = host.golden_cases("CogVideoX")


@pytest.mark.skipif(not COG_CASES, reason="no CogVideoX golden case to make a CogVideoX VAP file from")
def test_cogvideox_file_on_wan_path(pack, tmp_path):
    base, _, _ = _expert(pack, tmp_path, {}, seed=0)
    cog_expert = str(tmp_path / "cog_expert.safetensors")
    pack.vap_core.convert.convert(COG_CASES[0], expert_out=cog_expert, quiet=True)
    expert = pack.vap_core.expert.loading.load_expert(cog_expert)
    with pytest.raises(pack.vap_core.errors.VAPModelMismatch, match="(?i)cogvideox"):
        pack.vap_core.expert.loading.apply_expert(base, expert)
