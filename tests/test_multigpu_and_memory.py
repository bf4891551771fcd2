"""The expert follows ComfyUI's multi-GPU deep clones (core MultiGPU CFG Split), and ComfyUI's memory estimate
counts the reference tokens on the very first load of a model (where ComfyUI computes it, before loading)."""
import pytest
import torch

from test_wan_model import CONFIG, _run, tiny  # noqa: F401 (fixture)


def test_deepclone_multigpu_reloads_the_expert_and_the_clone_runs_its_own(pack, tiny):  # noqa: F811
    """What create_multigpu_deepclones does per extra device (here the CPU again: the mechanism, not the speed-up):
    the base and the expert are reloaded from their files, and the clone's forward uses the clone's expert."""
    import comfy.model_management
    key = pack.vap_core.wan.apply.WRAPPER_KEY
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    i = tiny["inputs"]
    want = _run(pack, patched, i)
    clone = patched.deepclone_multigpu(new_load_device=comfy.model_management.get_torch_device())
    clone_expert = clone.get_additional_models_with_key(key)[0]
    assert clone_expert is not tiny["expert"].patcher and clone_expert.model is not tiny["expert"].patcher.model
    assert clone.model is not patched.model
    torch.testing.assert_close(_run(pack, clone, i), want, rtol=0, atol=0)
    # the clone's forward reads the clone's expert (not the one attached first): change only the clone's
    with torch.no_grad():
        for p in clone_expert.model.parameters():
            p.mul_(0.5)
    assert not torch.allclose(_run(pack, clone, i), want, atol=1e-4)
    torch.testing.assert_close(_run(pack, patched, i), want, rtol=0, atol=0)


def test_multigpu_cfg_split_node_accepts_a_vap_model(pack, tiny):  # noqa: F811
    """Core's MultiGPU CFG Split on a one-device machine: no error, and the model still runs VAP."""
    nodes_multigpu = pytest.importorskip("comfy_extras.nodes_multigpu", reason="this ComfyUI has no multi-GPU nodes")
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    out = nodes_multigpu.MultiGPUCFGSplitNode.execute(patched, 2).args[0]
    i = tiny["inputs"]
    torch.testing.assert_close(_run(pack, out, i), _run(pack, patched, i), rtol=0, atol=0)


def test_first_estimate_counts_the_reference(pack, tiny, monkeypatch):  # noqa: F811
    """A fresh base, never loaded: the estimate ComfyUI makes before loading must include the reference tokens,
    and unloading leaves the base's own methods in place."""
    import comfy.clip_vision
    import comfy.conds
    import comfy.model_management
    import comfy.sample
    import comfy.sampler_helpers
    comfy.model_management.unload_all_models()
    base = tiny["base"]
    original_shapes = base.model.extra_conds_shapes
    estimates = []
    real = comfy.sampler_helpers.estimate_memory
    monkeypatch.setattr(comfy.sampler_helpers, "estimate_memory",
                        lambda *a, **k: estimates.append(real(*a, **k)) or estimates[-1])
    patched = pack.vap_core.expert.loading.apply_expert(base, tiny["expert"])
    wa = pack.vap_core.wan.apply
    i = tiny["inputs"]

    def cond(text, with_ref):
        d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": i["x"][:, 20:],
             "concat_mask": torch.zeros(1, 1, *i["x"].shape[2:])}
        d["clip_vision_output"].penultimate_hidden_states = i["clip"]
        if with_ref:
            d["model_conds"] = {wa.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                                wa.REF_CONTEXT: comfy.conds.CONDRegular(i["ref_context"]),
                                wa.REF_CLIP: comfy.conds.CONDRegular(i["ref_clip"])}
        return [[text, d]]

    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=1, cfg=3.0, sampler_name="euler", scheduler="simple", latent_image=latent, seed=0)
    for with_ref in (True, False):  # the reference run first: on the fresh, never loaded model
        comfy.sample.sample(patched, noise, positive=cond(i["context"], with_ref),
                            negative=cond(torch.zeros_like(i["context"]), with_ref), **kwargs)
    (with_ref_required, _), (plain_required, _) = estimates
    assert with_ref_required > plain_required
    comfy.model_management.unload_all_models()
    assert base.model.extra_conds_shapes == original_shapes  # the base is the base again
    assert wa.REF_LATENT not in base.model.memory_usage_factor_conds
