"""A GGUF Wan base (city96/ComfyUI-GGUF's ``UnetLoaderGGUF``) with the VAP expert: in process against the same base
from safetensors, and the shipped Wan workflow in a real server with its base loader swapped for the GGUF one.

The Q8_0 file is written here from the tiny random base with the ``gguf`` package, in the layout ComfyUI-GGUF's
loader reads (tests/gguf_fixtures.py). The pack is found through COMFYUI_GGUF_PATH, the host's custom_nodes/ or
~/ComfyUI-GGUF; everything here skips, saying why, where it or the ``gguf`` package is missing.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import e2e_server
import gguf_fixtures
import wan_fixtures

pytestmark = [pytest.mark.host]

GGUF_NAME = "vap_test_wan21_i2v_base-Q8_0.gguf"


@pytest.fixture(scope="module")
def gguf_nodes(pack):
    reason = gguf_fixtures.skip_reason()
    if reason:
        pytest.skip(reason)
    return gguf_fixtures.load_gguf_nodes()


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def tiny(pack, gguf_nodes, tmp_path_factory):
    import comfy.sd
    import folder_paths
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    root = str(tmp_path_factory.mktemp("gguf"))
    # ComfyUI's defaults (text_dim 4096, head dim 128): a GGUF carries no config metadata to override them
    sd, cfg = official_wan_mot_state_dict({"num_layers": 3, "block_idx_with_mot_ref": [0, 2]}, seed=3)
    src = wan_fixtures.write_official_folder(os.path.join(root, "official"), sd, cfg)
    models = os.path.join(root, "diffusion_models")
    os.makedirs(models)
    base_path, expert_path = os.path.join(models, "base.safetensors"), os.path.join(root, "expert.safetensors")
    pack.vap_core.convert.convert(src, expert_out=expert_path, base_out=base_path, quiet=True)
    kinds = gguf_fixtures.write_wan_gguf_q8(base_path, os.path.join(models, GGUF_NAME))
    folder_paths.add_model_folder_path("diffusion_models", models)
    (gguf_base,) = gguf_nodes["UnetLoaderGGUF"]().load_unet(GGUF_NAME)
    return {"base": comfy.sd.load_diffusion_model(base_path), "gguf": gguf_base, "kinds": kinds, "config": cfg,
            "expert": pack.vap_core.expert.loading.load_expert(expert_path),
            "inputs": wan_fixtures.random_inputs(cfg, seed=4)}


def _run(pack, patcher, i, with_ref=True):
    ref = wan_fixtures.ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]) if with_ref else None
    return wan_fixtures.run_diffusion_model(patcher, i["x"], i["t"], i["context"], i["clip"], ref)


def test_gguf_base_with_expert_matches_safetensors_base_within_q8_error(pack, tiny):
    import gguf
    apply_expert = pack.vap_core.expert.loading.apply_expert
    wan = tiny["gguf"].model.diffusion_model
    assert type(wan.blocks[0].self_attn.q).__module__.endswith("ops")  # ComfyUI-GGUF's layers
    assert wan.blocks[0].self_attn.q.weight.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert sum(k == "Q8_0" for k in tiny["kinds"].values()) > 30
    i = tiny["inputs"]
    want = _run(pack, apply_expert(tiny["base"], tiny["expert"]), i)
    got = _run(pack, apply_expert(tiny["gguf"], tiny["expert"]), i)
    plain_error = _rel(_run(pack, tiny["gguf"], i, False), _run(pack, tiny["base"], i, False))
    error = _rel(got, want)
    # Q8_0 rounds each weight to 1/254 of its block's largest: ~1 % on the output of the plain base (measured
    # 0.99 %); the expert runs on top of the quantized base and adds none of its own (measured 0.93 %)
    assert 0 < plain_error < 0.03 and error < 0.03 and error < 2 * plain_error, (error, plain_error)
    assert _rel(got, _run(pack, tiny["gguf"], i, False)) > 3 * error  # the expert acts on the GGUF base


def test_gguf_base_with_expert_samples_like_safetensors(pack, tiny):
    """KSampler's route (comfy.sample.sample: GGUFModelPatcher loading, the expert as an additional model)."""
    import comfy.clip_vision
    import comfy.conds
    import comfy.sample
    apply_expert = pack.vap_core.expert.loading.apply_expert
    wa = pack.vap_core.wan.apply
    i = tiny["inputs"]

    def cond(text, ref_text):
        d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": i["x"][:, 20:],
             "concat_mask": torch.zeros(1, 1, *i["x"].shape[2:]),
             "model_conds": {wa.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                             wa.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                             wa.REF_CLIP: comfy.conds.CONDRegular(i["ref_clip"])}}
        d["clip_vision_output"].penultimate_hidden_states = i["clip"]
        return [[text, d]]

    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=3, cfg=3.0, sampler_name="euler", scheduler="simple", latent_image=latent, seed=0,
                  positive=cond(i["context"], i["ref_context"]),
                  negative=cond(torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"])))
    want = comfy.sample.sample(apply_expert(tiny["base"], tiny["expert"]), noise, **kwargs)
    got = comfy.sample.sample(apply_expert(tiny["gguf"], tiny["expert"]), noise, **kwargs)
    assert torch.isfinite(got).all()
    assert _rel(got, want) < 0.03, _rel(got, want)


# ---- in a real server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_server(tmp_path_factory):
    reason = gguf_fixtures.skip_reason()
    if reason:
        pytest.skip(reason)
    path, _ = gguf_fixtures.find_gguf_pack()

    def add_gguf_base(base):
        models = os.path.join(base, "models", "diffusion_models")
        from vap_headless.demo.assets import MODEL_FILES
        gguf_fixtures.write_wan_gguf_q8(os.path.join(models, MODEL_FILES["diffusion_models"]),
                                        os.path.join(models, GGUF_NAME))

    yield from e2e_server.start(str(tmp_path_factory.mktemp("gguf_server_base")),
                                extra_node_dirs=[(path, gguf_fixtures.FOLDER_NAME)], cog=False, prepare=add_gguf_base)


def _gguf_prompt(server) -> dict:
    """The shipped official Wan workflow (tiny files and size) with its UNETLoader swapped for UnetLoaderGGUF."""
    prompt = e2e_server.tiny(server, "wan_vap_official")
    (loader,) = [k for k, n in prompt.items() if n["class_type"] == "UNETLoader"]
    prompt[loader] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": GGUF_NAME},
                      "_meta": prompt[loader].get("_meta", {})}
    return prompt


@pytest.mark.server
@pytest.mark.parametrize("expert_weight_dtype", [None, "fp8_e4m3fn"])
def test_shipped_wan_workflow_with_gguf_base_writes_a_video(gguf_server, tmp_path, expert_weight_dtype):
    """None: the expert loader as a graph saved before weight_dtype existed (input absent)."""
    info = gguf_server["client"].object_info()
    assert "UnetLoaderGGUF" in info, gguf_server["server"].log_tail()
    assert GGUF_NAME in info["UnetLoaderGGUF"]["input"]["required"]["unet_name"][0]
    prompt = _gguf_prompt(gguf_server)
    (expert_loader,) = [n for n in prompt.values() if n["class_type"] == "VAPExpertLoader"]
    if expert_weight_dtype is None:
        del expert_loader["inputs"]["weight_dtype"]
    else:
        expert_loader["inputs"]["weight_dtype"] = expert_weight_dtype
    log_start = len(gguf_server["server"].log_text())
    result = e2e_server.run_ok(gguf_server, prompt)
    video = e2e_server.video(gguf_server, result, tmp_path)
    w, h, n = gguf_server["assets"].TINY_SIZE
    assert video["frames"].shape == (n, h, w, 3)
    assert np.isfinite(video["frames"].astype(np.float32)).all() and video["frames"].std() > 1.0
    log = gguf_server["server"].log_text()[log_start:]
    if expert_weight_dtype is None:  # the first run loads the GGUF base (later runs take it from the cache)
        assert "gguf qtypes" in log and "Q8_0" in log, log[-3000:]
