"""CogVideoX VAP misuse gets an error naming the problem and the fix (real host, tiny models)."""
import sys

import pytest
import torch

import wan_fixtures
from cog_fixtures import (official_cog_mot_state_dict, random_inputs, ref_kwargs, run_diffusion_model, tiny_case,
                          write_official_folder)

WAN_CONFIG = {"num_layers": 2, "block_idx_with_mot_ref": [0], "text_dim": 32, "ffn_dim": 64}


@pytest.fixture(scope="module")
def cog(pack, tmp_path_factory):
    base, expert, cfg = tiny_case(pack, str(tmp_path_factory.mktemp("cog")), seed=0)
    return {"base": base, "expert": expert, "config": cfg,
            "patched": pack.vap_core.expert.loading.apply_expert(base, expert)}


@pytest.fixture(scope="module")
def wan(pack, tmp_path_factory):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    out = tmp_path_factory.mktemp("wan")
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=0)
    root = wan_fixtures.write_official_folder(str(out / "vap"), sd, cfg)
    base, expert, _ = wan_fixtures.convert_and_load(pack, root, str(out))
    return {"base": base, "expert": expert}


def _mismatch(pack):
    return pack.vap_core.errors.VAPModelMismatch


def _input_error(pack):
    return pack.vap_core.errors.VAPInputError


# ---- wrong model ------------------------------------------------------------------------------------------

def test_cog_expert_on_wan_model(pack, cog, wan):
    with pytest.raises(_mismatch(pack), match="CogVideoX expert needs a CogVideoX-5b-I2V model, but MODEL is WanModel"):
        pack.vap_core.expert.loading.apply_expert(wan["base"], cog["expert"])


def test_wan_expert_on_cog_model(pack, cog, wan):
    with pytest.raises(_mismatch(pack), match="Wan expert needs a Wan2.1 model, but MODEL is CogVideoXTransformer3DModel"):
        pack.vap_core.expert.loading.apply_expert(cog["base"], wan["expert"])


def test_wan_expert_through_the_cog_apply_path(pack, cog, wan):
    with pytest.raises(_mismatch(pack), match="wan2.1 VAP expert but the apply node got a CogVideoX model.*Wan2.1"):
        pack.vap_core.cogvideox.apply.apply_expert(cog["base"], wan["expert"])


def test_text_to_video_base(pack, cog, tmp_path):
    t2v, _, _ = tiny_case(pack, str(tmp_path), {"in_channels": 16}, seed=1)
    assert type(t2v.model.model_config).__name__ == "CogVideoX_T2V"
    with pytest.raises(_mismatch(pack), match="text-to-video.*CogVideoX-5b-I2V"):
        pack.vap_core.expert.loading.apply_expert(t2v, cog["expert"])


def test_narrower_base(pack, cog, tmp_path):
    wide, _, _ = tiny_case(pack, str(tmp_path), {"num_attention_heads": 3}, seed=2)
    with pytest.raises(_mismatch(pack), match="expert is 128 wide.*base CogVideoX is 192 wide.*CogVideoX-5b-I2V"):
        pack.vap_core.expert.loading.apply_expert(wide, cog["expert"])


def test_base_with_fewer_blocks_than_the_expert(pack, cog, tmp_path):
    shallow, _, _ = tiny_case(pack, str(tmp_path), {"num_layers": 1, "block_idx_with_mot_ref": [0]}, seed=3)
    with pytest.raises(_mismatch(pack), match="does not match the base CogVideoX.*CogVideoX-5b-I2V"):
        pack.vap_core.expert.loading.apply_expert(shallow, cog["expert"])


def test_base_without_its_learned_positional_table(pack, cog, tmp_path):
    import comfy.sd
    import comfy.utils
    tiny_case(pack, str(tmp_path), seed=4)
    sd, metadata = comfy.utils.load_torch_file(str(tmp_path / "cog_vap_4" / "cog_base.safetensors"), return_metadata=True)
    del sd["patch_embed.pos_embedding"]
    base = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
    with pytest.raises(_mismatch(pack), match="without its learned positional table"):
        pack.vap_core.expert.loading.apply_expert(base, cog["expert"])


def test_host_without_native_cogvideox(pack, cog, tmp_path, monkeypatch):
    """An older ComfyUI (no comfy/ldm/cogvideo): loading or applying names the version that has it."""
    expert_file = str(tmp_path / "expert.safetensors")
    sd, config = official_cog_mot_state_dict(seed=5)
    root = write_official_folder(str(tmp_path / "vap"), sd, config)
    pack.vap_core.convert.convert(root, expert_out=expert_file, quiet=True)
    monkeypatch.setitem(sys.modules, "comfy.ldm.cogvideo.model", None)  # what importing it does on such a host
    with pytest.raises(_mismatch(pack), match=r"no native CogVideoX.*ComfyUI >= 0\.25"):
        pack.vap_core.expert.loading.load_expert(expert_file)
    with pytest.raises(_mismatch(pack), match=r"ComfyUI >= 0\.25"):
        pack.vap_core.expert.loading.apply_expert(cog["base"], cog["expert"])


# ---- wrong reference input --------------------------------------------------------------------------------

def _run(pack, cog, i, **extra):
    return run_diffusion_model(cog["patched"], i["x"], i["t"], i["context"],
                               {**ref_kwargs(pack, i["ref_latent"], i["ref_context"]), **extra})


def test_more_than_three_references(pack, cog):
    i = random_inputs(cog["config"], num_refs=4, batch=1)
    with pytest.raises(_input_error(pack), match="4 reference videos given; CogVideoX VAP takes 1 to 3"):
        _run(pack, cog, i)


def test_resolution_other_than_the_learned_table(pack, cog):
    height = cog["config"]["sample_height"] + 2
    i = random_inputs(cog["config"], height=height, batch=1)
    with pytest.raises(_input_error(pack), match=f"learned positional embedding for 64x48 video only.*got 64x{height * 8}"):
        _run(pack, cog, i)


def test_reference_frames_not_a_multiple_of_the_target(pack, cog):
    i = random_inputs(cog["config"], batch=1)
    i["ref_latent"] = i["ref_latent"][:, :, :-1]
    with pytest.raises(_input_error(pack), match="not a multiple of the target's"):
        _run(pack, cog, i)


def test_one_caption_per_reference(pack, cog):
    i = random_inputs(cog["config"], num_refs=2, batch=1)
    i["ref_context"] = i["ref_context"][:, : cog["config"]["max_text_seq_length"]]
    with pytest.raises(_input_error(pack), match="2 reference\\(s\\) need 2 x 226.*one caption per reference"):
        _run(pack, cog, i)


def test_reference_count_disagrees_with_the_latent(pack, cog):
    i = random_inputs(cog["config"], num_refs=2, batch=1)
    with pytest.raises(_input_error(pack), match="vap_num_refs says 3 references but the reference latent holds 2"):
        _run(pack, cog, i, **{pack.vap_core.cogvideox.apply.REF_COUNT: 3})


def test_reference_latent_without_captions(pack, cog):
    i = random_inputs(cog["config"], batch=1)
    ca = pack.vap_core.cogvideox.apply
    with pytest.raises(_mismatch(pack), match="no 'vap_ref_context'"):
        run_diffusion_model(cog["patched"], i["x"], i["t"], i["context"], {ca.REF_LATENT: i["ref_latent"]})


def test_reference_size_differs_from_target(pack, cog):
    i = random_inputs(cog["config"], batch=1)
    i["ref_latent"] = torch.nn.functional.pad(i["ref_latent"], (0, 2))
    with pytest.raises(_input_error(pack), match="resize the references to the target size"):
        _run(pack, cog, i)
