"""The pack inside the real ComfyUI: version, loading through ComfyUI's own custom-node loader, the
loader/apply nodes, and fp8 files produced by the converter."""
import asyncio
import os

import pytest
import torch

import host
from wan_fixtures import convert_and_load, random_inputs, ref_kwargs, run_diffusion_model, write_official_folder

CONFIG = {"num_layers": 2, "block_idx_with_mot_ref": [1], "text_dim": 32, "ffn_dim": 64}
NODE_IDS = {"VAPExpertLoader", "VAPApplyExpert"}


def test_host_is_comfyui_025_or_newer(pack):
    import comfyui_version
    major, minor = (int(p) for p in comfyui_version.__version__.split(".")[:2])
    assert (major, minor) >= (0, 25), f"tests target ComfyUI >= 0.25, found {comfyui_version.__version__} at {host.COMFYUI_PATH}"


def test_pack_loads_through_comfyui_custom_node_loader(pack):
    import nodes
    assert asyncio.run(nodes.load_custom_node(host.PACK_DIR)) is True
    assert NODE_IDS <= set(nodes.NODE_CLASS_MAPPINGS)
    import folder_paths
    assert "vap" in folder_paths.folder_names_and_paths
    assert folder_paths.folder_names_and_paths["vap"][1] == {".safetensors"}


@pytest.fixture
def vap_folder(pack, tmp_path):
    import folder_paths
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=21)
    root = write_official_folder(str(tmp_path / "vap"), sd, cfg)
    models = tmp_path / "models_vap"
    models.mkdir()
    base, expert, paths = convert_and_load(pack, root, str(tmp_path))
    os.replace(paths["expert"], models / "tiny_expert.safetensors")
    pack.nodes.paths.register_model_folder()
    folder_paths.folder_names_and_paths["vap"][0].append(str(models))
    yield base, cfg
    folder_paths.folder_names_and_paths["vap"][0].remove(str(models))


def test_loader_and_apply_nodes(pack, vap_folder):
    base, cfg = vap_folder
    loader, apply = pack.nodes.expert_nodes.VAPExpertLoader, pack.nodes.expert_nodes.VAPApplyExpert
    assert "tiny_expert.safetensors" in pack.nodes.paths.expert_files()
    expert = loader.execute(expert_name="tiny_expert.safetensors").result[0]
    assert expert.variant == "wan2.1" and expert.expert_blocks == [1]
    patched = apply.execute(model=base, vap_expert=expert).result[0]
    i = random_inputs(cfg, seed=2)
    out = run_diffusion_model(patched, i["x"], i["t"], i["context"], i["clip"], ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]))
    assert torch.isfinite(out).all()
    assert apply.validate_inputs(start_percent=0.6, end_percent=0.2) is not True
    assert loader.fingerprint_inputs("tiny_expert.safetensors") == loader.fingerprint_inputs("tiny_expert.safetensors")



def test_loader_weight_dtype_is_core_unet_loaders_and_optional(pack, vap_folder):
    """Load VAP Expert offers core UNETLoader's weight_dtype choices as an optional input defaulting to
    "default" (graphs saved before it existed run unchanged); the node passes the choice to the loader."""
    import nodes
    loader = pack.nodes.expert_nodes.VAPExpertLoader
    (weight_dtype,) = [i for i in loader.define_schema().inputs if i.id == "weight_dtype"]
    core = nodes.UNETLoader.INPUT_TYPES()["required"]["weight_dtype"][0]
    assert list(weight_dtype.options) == list(core) == list(pack.vap_core.expert.weight_dtype.WEIGHT_DTYPES)
    assert weight_dtype.optional and weight_dtype.default == "default"
    default = loader.execute(expert_name="tiny_expert.safetensors").result[0]
    fp8 = loader.execute(expert_name="tiny_expert.safetensors", weight_dtype="fp8_e5m2").result[0]
    assert default.module.blocks["1"].self_attn.q.weight.dtype == torch.float32
    assert fp8.module.blocks["1"].self_attn.q.weight.dtype == torch.float8_e5m2
    assert loader.fingerprint_inputs("tiny_expert.safetensors") != \
        loader.fingerprint_inputs("tiny_expert.safetensors", "fp8_e5m2")

def test_fp8_files_load_and_run(pack, tmp_path):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=22)
    root = write_official_folder(str(tmp_path / "vap"), sd, cfg)
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp8").mkdir()
    base32, expert32, _ = convert_and_load(pack, root, str(tmp_path / "fp32"))
    base8, expert8, _ = convert_and_load(pack, root, str(tmp_path / "fp8"), dtype="fp8_e4m3fn")
    assert expert8.module.blocks["1"].self_attn.q.weight.dtype == torch.float8_e4m3fn
    i = random_inputs(cfg, seed=3)
    ref = ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"])
    out32 = run_diffusion_model(pack.vap_core.expert.loading.apply_expert(base32, expert32), i["x"], i["t"], i["context"], i["clip"], ref)
    out8 = run_diffusion_model(pack.vap_core.expert.loading.apply_expert(base8, expert8), i["x"], i["t"], i["context"], i["clip"], ref)
    assert torch.isfinite(out8).all()
    # fp8 rounding (3 mantissa bits) moves outputs, but they stay close to the fp32 result
    rel = ((out8.float() - out32).norm() / out32.norm()).item()
    assert rel < 0.15, rel
