"""Node UX: categories where core 0.25 puts their kin, search aliases, honest tooltips, and the expert loader
reading an official release folder placed in models/vap/ (and saying what to put there when it is empty)."""
import asyncio
import os

import pytest
import torch

import host
from cog_fixtures import official_cog_mot_state_dict
from wan_fixtures import write_official_folder

CATEGORIES = {
    "VAPExpertLoader": "model/loaders",
    "VAPApplyExpert": "model/patch/vap",
    "VAPWanConditioning": "model/conditioning/wan/vap",
    "VAPCogConditioning": "model/conditioning/cogvideox/vap",
    "VAPWanEncodeReference": "model/conditioning/wan/vap",
    "VAPWanConditioningFromReference": "model/conditioning/wan/vap",
    "VAPCogEncodeReference": "model/conditioning/cogvideox/vap",
    "VAPCogConditioningFromReference": "model/conditioning/cogvideox/vap",
    "VAPDynamicCFGGuider": "model/sampling/guiders",
    "VAPReferenceGuider": "model/sampling/guiders",
    "VAPOfficialNoise": "model/sampling/noise",
    "VAPLoadReferenceVideo": "video",
}
# where core 0.25 itself puts the kin of each (a core node with exactly this category must exist)
CORE_KIN = {"model/loaders", "model/patch", "model/conditioning/wan", "model/conditioning", "model/sampling/guiders",
            "model/sampling/noise", "video"}


def _schemas(pack):
    nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    return {n.define_schema().node_id: n.define_schema() for n in nodes}


def _core_categories() -> set[str]:
    found = set()
    for folder in ("comfy_extras", ""):
        directory = os.path.join(host.COMFYUI_PATH, folder)
        for name in os.listdir(directory):
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    text = f.read()
                for marker in ('category="', 'CATEGORY = "'):
                    for part in text.split(marker)[1:]:
                        found.add(part.split('"', 1)[0])
    return found


def test_categories_sit_with_core_kin(pack):
    schemas = _schemas(pack)
    assert {k: s.category for k, s in schemas.items()} == CATEGORIES
    core = _core_categories()
    assert CORE_KIN <= core, CORE_KIN - core
    for category in CATEGORIES.values():  # each sits in (or under) a category core uses
        assert category in core or any(category.startswith(k + "/") for k in CORE_KIN), category


def test_search_aliases(pack):
    for node_id, schema in _schemas(pack).items():
        aliases = set(schema.search_aliases or [])
        assert {"video as prompt", "vap", "reference video"} <= aliases, node_id


def test_no_optional_input_says_required(pack):
    for node_id, schema in _schemas(pack).items():
        for i in schema.inputs:
            assert i.tooltip, (node_id, i.id)
            if i.optional:
                assert "required" not in i.tooltip.lower(), (node_id, i.id, i.tooltip)


def test_wan_conditioning_requires_both_clip_vision_inputs_in_the_same_slots(pack):
    """Required now (the model needs both); their position is unchanged, so saved graphs keep their links."""
    schema = _schemas(pack)["VAPWanConditioning"]
    inputs = {i.id: i for i in schema.inputs}
    assert not inputs["clip_vision_start_image"].optional and not inputs["clip_vision_reference"].optional
    v1 = pack.nodes.wan_conditioning.VAPWanConditioning.INPUT_TYPES()
    assert list(v1["required"])[-2:] == ["clip_vision_start_image", "clip_vision_reference"]
    assert list(v1["optional"]) == ["ref_negative"]


# ------------------------------------------------------------------------------------ models/vap/ release folders

@pytest.fixture
def vap_folder(pack, tmp_path):
    """An empty models/vap/ of its own (the host's folder registry restored afterwards)."""
    import folder_paths
    before = folder_paths.folder_names_and_paths.get("vap")
    root = tmp_path / "models_vap"
    root.mkdir()
    pack.nodes.paths.register_model_folder()
    folder_paths.folder_names_and_paths["vap"] = ([str(root)], set(pack.nodes.paths.EXTENSIONS))
    folder_paths.filename_list_cache.pop("vap", None)
    yield root
    folder_paths.filename_list_cache.pop("vap", None)
    if before is None:
        folder_paths.folder_names_and_paths.pop("vap", None)
    else:
        folder_paths.folder_names_and_paths["vap"] = before


def _release(root, name, variant, shards):
    if variant == "wan":
        from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
        sd, cfg = official_wan_mot_state_dict({"num_layers": 3, "block_idx_with_mot_ref": [0, 2]}, seed=11)
    else:
        sd, cfg = official_cog_mot_state_dict(None, seed=12)
    release = os.path.join(str(root), name)
    write_official_folder(release, sd, cfg, shards=shards)
    # the rest of a release (VAE, text encoder...) holds safetensors too: they are not experts
    os.makedirs(os.path.join(release, "vae"))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, os.path.join(release, "vae", "diffusion_pytorch_model.safetensors"))
    return release


@pytest.mark.parametrize("variant,shards", [("wan", 3), ("cog", 2)])
def test_expert_from_a_release_folder_equals_the_converters_file(pack, vap_folder, tmp_path, variant, shards):
    loader = pack.nodes.expert_nodes.VAPExpertLoader
    release = _release(vap_folder, f"Video-As-Prompt-{variant}", variant, shards)
    converted = str(tmp_path / "converted_expert.safetensors")
    pack.vap_core.convert.convert(release, expert_out=converted, quiet=True)

    name = f"Video-As-Prompt-{variant}/"
    options = loader.define_schema().inputs[0].options
    assert options == [name]  # the release once, not its shards nor its vae/
    assert loader.validate_inputs(name) is True
    from_folder = loader.execute(name).args[0]
    from_file = pack.vap_core.expert.loading.load_expert(converted)
    assert (from_folder.variant, from_folder.expert_blocks) == (from_file.variant, from_file.expert_blocks)
    a, b = from_folder.module.state_dict(), from_file.module.state_dict()
    assert sorted(a) == sorted(b) and len(a) > 10
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k

    before = loader.fingerprint_inputs(name)
    shard = sorted(f for f in os.listdir(os.path.join(release, "transformer")) if f.endswith(".safetensors"))[0]
    os.utime(os.path.join(release, "transformer", shard), (1, 1))
    assert loader.fingerprint_inputs(name) != before  # a replaced shard is not served from ComfyUI's cache


def test_empty_models_vap_says_what_to_put_where(pack, vap_folder):
    loader = pack.nodes.expert_nodes.VAPExpertLoader
    assert loader.define_schema().inputs[0].options == []
    message = loader.validate_inputs("vap_wan2.1_14b_expert_bf16.safetensors")
    assert isinstance(message, str)
    for part in ("models/vap/", "Video-As-Prompt-Wan2.1-14B/", "transformer/", "python -m vap_core.convert"):
        assert part in message, part


def test_an_unknown_name_lists_what_is_there(pack, vap_folder):
    loader = pack.nodes.expert_nodes.VAPExpertLoader
    (vap_folder / "my_expert.safetensors").write_bytes(b"")
    import folder_paths
    folder_paths.filename_list_cache.pop("vap", None)
    message = loader.validate_inputs("other.safetensors")
    assert "'other.safetensors' is not in models/vap/" in message and "my_expert.safetensors" in message
    assert loader.validate_inputs("my_expert.safetensors", "fp9").startswith("weight_dtype 'fp9'")
