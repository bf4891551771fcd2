"""The patched Wan model stays a normal ComfyUI MODEL: no-reference identity, core LoRA loader,
clone sharing, low-VRAM loading, and the real sampler path through conditioning."""
import os

import pytest
import torch
from safetensors.torch import save_file

from wan_fixtures import convert_and_load, random_inputs, ref_kwargs, run_diffusion_model, write_official_folder

CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}


@pytest.fixture
def tiny(pack, tmp_path):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    sd, cfg = official_wan_mot_state_dict(CONFIG, seed=3)
    write_official_folder(str(tmp_path / "vap"), sd, cfg)
    base, expert, paths = convert_and_load(pack, str(tmp_path / "vap"), str(tmp_path))
    return {"base": base, "expert": expert, "paths": paths, "config": cfg, "inputs": random_inputs(cfg, seed=4)}


def _run(pack, patcher, i, with_ref=True):
    ref = ref_kwargs(pack, i["ref_latent"], i["ref_context"], i["ref_clip"]) if with_ref else None
    return run_diffusion_model(patcher, i["x"], i["t"], i["context"], i["clip"], ref)


def test_without_reference_output_is_bit_identical_to_base(pack, tiny):
    i = tiny["inputs"]
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    plain = _run(pack, tiny["base"], i, with_ref=False)
    assert torch.equal(_run(pack, patched, i, with_ref=False), plain)
    assert not torch.allclose(_run(pack, patched, i), plain, atol=1e-3)  # the reference does act


def test_clone_shares_expert_weights(pack, tiny):
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    clone = patched.clone().clone()
    key = pack.vap_core.wan.apply.WRAPPER_KEY
    expert_clone = clone.get_additional_models_with_key(key)[0]
    assert expert_clone.model is tiny["expert"].patcher.model
    original = dict(tiny["expert"].module.named_parameters())
    for name, param in expert_clone.model.named_parameters():
        assert param.data_ptr() == original[name].data_ptr(), name
    i = tiny["inputs"]
    assert torch.equal(_run(pack, clone, i), _run(pack, patched, i))


def test_core_lora_loader_still_patches_the_base(pack, tiny, tmp_path):
    import comfy.model_management
    import folder_paths
    import nodes
    dim = tiny["config"]["num_attention_heads"] * tiny["config"]["attention_head_dim"]
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(dim, 4, generator=g) * 0.3, torch.randn(4, dim, generator=g) * 0.3
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    # kohya names for block 0's target query projection (an expert block: target and ref share its attention)
    save_file({"lora_unet_blocks_0_self_attn_q.lora_up.weight": up,
               "lora_unet_blocks_0_self_attn_q.lora_down.weight": down,
               "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(4.0)}, str(lora_dir / "tiny_lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)

    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    (with_lora,) = nodes.LoraLoaderModelOnly().load_lora_model_only(patched, "tiny_lora.safetensors", 1.0)
    comfy.model_management.load_models_gpu([with_lora])
    i = tiny["inputs"]
    got = _run(pack, with_lora, i)
    with_lora.unpatch_model()

    # the same delta written into the base weights by hand gives the same VAP output
    weight = tiny["base"].model.diffusion_model.blocks[0].self_attn.q.weight
    original = weight.data.clone()
    weight.data += up @ down
    try:
        want = _run(pack, patched, i)
    finally:
        weight.data.copy_(original)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, _run(pack, patched, i), atol=1e-4)


def test_low_vram_partial_load_of_expert_matches_full_load(pack, tiny):
    import comfy.model_management
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    i = tiny["inputs"]
    expert_patcher = tiny["expert"].patcher
    device = comfy.model_management.get_torch_device()
    expert_patcher.load(device, lowvram_model_memory=0, full_load=True)
    full = _run(pack, patched, i)
    expert_patcher.detach()
    expert_patcher.load(device, lowvram_model_memory=1)  # forces per-layer casting ("lowvram")
    assert expert_patcher.model.model_lowvram
    assert any(getattr(m, "comfy_cast_weights", False) for m in expert_patcher.model.modules())
    partial = _run(pack, patched, i)
    expert_patcher.detach()
    assert torch.allclose(full, partial, atol=1e-6)


def test_sampler_path_reads_reference_from_conditioning(pack, tiny):
    """KSampler's route: conds -> model_conds -> batched cond/uncond -> wrapper (docs/HOST_INTEGRATION.md#how-the-reference-reaches-the-model)."""
    import comfy.conds
    import comfy.sample
    import comfy.clip_vision
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    wa = pack.vap_core.wan.apply
    i = tiny["inputs"]
    seen = []
    patched.model_options["transformer_options"]["vap_block_callback"] = lambda k, x, r: seen.append((k, x.shape[0]))

    def cond(text, ref_text, with_ref=True):
        d = {"clip_vision_output": comfy.clip_vision.Output()}
        d["clip_vision_output"].penultimate_hidden_states = i["clip"]
        d["concat_latent_image"] = i["x"][:, 20:]
        d["concat_mask"] = torch.zeros(1, 1, *i["x"].shape[2:])
        if with_ref:
            d["model_conds"] = {wa.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                                wa.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                wa.REF_CLIP: comfy.conds.CONDRegular(i["ref_clip"])}
        return [[text, d]]

    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=2, cfg=3.0, sampler_name="euler", scheduler="simple", latent_image=latent, seed=0)
    out = comfy.sample.sample(patched, noise, positive=cond(i["context"], i["ref_context"]),
                              negative=cond(torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"])), **kwargs)
    assert torch.isfinite(out).all()
    assert {k for k, _ in seen} == set(range(CONFIG["num_layers"]))
    assert max(b for _, b in seen) == 2  # cond and uncond went through one batched call
    plain = comfy.sample.sample(patched, noise, positive=cond(i["context"], None, with_ref=False),
                                negative=cond(torch.zeros_like(i["context"]), None, with_ref=False), **kwargs)
    assert not torch.allclose(out, plain, atol=1e-4)
