"""The CogVideoX model with the VAP expert stays a normal ComfyUI MODEL: no-reference identity, clone sharing,
1-3 references, frame counts off the learned table, the expert's active range, and the real sampler path."""
import pytest
import torch

from cog_fixtures import random_inputs, ref_kwargs, run_diffusion_model, tiny_case


@pytest.fixture(scope="module")
def tiny(pack, tmp_path_factory):
    base, expert, cfg = tiny_case(pack, str(tmp_path_factory.mktemp("cog")), seed=3)
    return {"base": base, "expert": expert, "config": cfg}


def _run(pack, patcher, i, with_ref=True, callback=None):
    ref = ref_kwargs(pack, i["ref_latent"], i["ref_context"]) if with_ref else None
    return run_diffusion_model(patcher, i["x"], i["t"], i["context"], ref, callback=callback)


def test_without_reference_output_is_bit_identical_to_base(pack, tiny):
    i = random_inputs(tiny["config"], seed=4)
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    plain = _run(pack, tiny["base"], i, with_ref=False)
    assert torch.equal(_run(pack, patched, i, with_ref=False), plain)
    assert not torch.allclose(_run(pack, patched, i), plain, atol=1e-3)  # the reference does act


@pytest.mark.parametrize("num_refs", [1, 2])
def test_skipping_unread_reference_work_is_exact(pack, tiny, num_refs):
    """Without a block callback the last expert block skips the reference's queries, output projection and FFN
    (nothing reads them); with one (as the golden parity test runs) everything is computed: same output."""
    i = random_inputs(tiny["config"], num_refs=num_refs, seed=8)
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    streams = {}
    full = _run(pack, patched, i, callback=lambda k, x, r, t, rt: streams.setdefault(k, r.clone()))
    fast = _run(pack, patched, i)
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-6)
    last = tiny["expert"].expert_blocks[-1]
    assert not torch.equal(streams[last], streams[last - 1])  # the full path did update the reference there


def test_clone_shares_expert_weights(pack, tiny):
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    clone = patched.clone().clone()
    expert_clone = clone.get_additional_models_with_key(pack.vap_core.cogvideox.apply.WRAPPER_KEY)[0]
    assert expert_clone.model is tiny["expert"].patcher.model
    i = random_inputs(tiny["config"], seed=5)
    assert torch.equal(_run(pack, clone, i), _run(pack, patched, i))


def test_lowvram_expert_matches_full_load(pack, tiny):
    import comfy.model_management
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    i = random_inputs(tiny["config"], seed=11)
    expert_patcher = tiny["expert"].patcher
    device = comfy.model_management.get_torch_device()
    expert_patcher.load(device, lowvram_model_memory=0, full_load=True)
    full = _run(pack, patched, i)
    expert_patcher.detach()
    expert_patcher.load(device, lowvram_model_memory=1)  # forces per-layer casting ("lowvram")
    try:
        assert expert_patcher.model.model_lowvram
        assert any(getattr(m, "comfy_cast_weights", False) for m in expert_patcher.model.modules())
        partial = _run(pack, patched, i)
    finally:
        expert_patcher.detach()
    assert torch.allclose(full, partial, atol=1e-6)


@pytest.mark.parametrize("num_refs", [1, 2, 3])
def test_references_and_untouched_reference_outside_expert_blocks(pack, tiny, num_refs):
    """1 to 3 references run; blocks without an expert pass the reference stream through bit-identically."""
    i = random_inputs(tiny["config"], num_refs=num_refs, seed=6)
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    seen = {}
    out = _run(pack, patched, i, callback=lambda k, x, r, t, rt: seen.__setitem__(k, (r.clone(), rt.clone())))
    assert torch.isfinite(out).all() and out.shape == (i["x"].shape[0], 16, *i["x"].shape[2:])
    text = tiny["config"]["max_text_seq_length"]
    assert seen[0][1].shape[1] == num_refs * text
    for k in range(1, tiny["config"]["num_layers"]):
        if k not in tiny["expert"].expert_blocks:
            assert all(torch.equal(a, b) for a, b in zip(seen[k], seen[k - 1])), k


def test_reference_order_matters(pack, tiny):
    """References are distinct streams with their own temporal positions, not a bag."""
    i = random_inputs(tiny["config"], num_refs=2, seed=7)
    frames = i["x"].shape[2]
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    swapped = dict(i)
    swapped["ref_latent"] = torch.cat([i["ref_latent"][:, :, frames:], i["ref_latent"][:, :, :frames]], dim=2)
    text = tiny["config"]["max_text_seq_length"]
    swapped["ref_context"] = torch.cat([i["ref_context"][:, text:], i["ref_context"][:, :text]], dim=1)
    assert not torch.allclose(_run(pack, patched, i), _run(pack, patched, swapped), atol=1e-4)


@pytest.mark.parametrize("frames_offset", [-1, 1])
def test_frame_counts_off_the_learned_table(pack, tiny, frames_offset):
    """Fewer or more latent frames than the learned table covers: the official model (and the pack) recompute
    a sincos table; ComfyUI's own forward would slice the learned one (and fail beyond its length)."""
    stored = (tiny["config"]["sample_frames"] - 1) // tiny["config"]["temporal_compression_ratio"] + 1
    i = random_inputs(tiny["config"], frames=stored + frames_offset, seed=8)
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    out = _run(pack, patched, i)
    assert torch.isfinite(out).all() and out.shape[2] == stored + frames_offset


def test_active_range(pack, tiny):
    """Outside start/end the model is the official base alone (the pack's forward without the reference stream,
    not ComfyUI's plain forward, which has no RoPE for this model); inside it runs VAP."""
    i = random_inputs(tiny["config"], seed=9)
    sigmas = torch.linspace(10.0, 0.0, 5)
    late = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"], start=0.5, end=1.0)
    cog = tiny["base"].model.diffusion_model

    def at_step(step, ref=True):
        opts = {"sample_sigmas": sigmas, "sigmas": sigmas[step:step + 1], "wrappers": late.wrappers}
        with torch.no_grad():
            return late.model.diffusion_model(i["x"], i["t"], i["context"], transformer_options=opts,
                                              **(ref_kwargs(pack, i["ref_latent"], i["ref_context"]) if ref else {}))
    with torch.no_grad():
        base_alone = pack.vap_core.cogvideox.mot.vap_forward(cog, tiny["expert"].module, i["x"], i["t"], i["context"],
                                                       None, None, {})
    assert torch.equal(at_step(0), base_alone)
    assert torch.equal(at_step(0, ref=False), _run(pack, tiny["base"], i, with_ref=False))  # no reference: ComfyUI's
    assert not torch.allclose(at_step(3), base_alone, atol=1e-3)


def test_sampler_path_reads_reference_from_conditioning(pack, tiny):
    """KSampler's route: conds -> model_conds -> batched cond/uncond -> wrapper (docs/HOST_INTEGRATION.md#how-the-reference-reaches-the-model)."""
    import comfy.conds
    import comfy.sample
    ca = pack.vap_core.cogvideox.apply
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    i = random_inputs(tiny["config"], num_refs=2, batch=1, seed=10)
    seen = []
    patched.model_options["transformer_options"]["vap_block_callback"] = \
        lambda k, x, r, t, rt: seen.append((k, x.shape[0], rt.shape[1]))

    def cond(text, ref_text, with_ref=True):
        d = {"concat_latent_image": i["x"][:, 16:]}
        if with_ref:
            d["model_conds"] = {ca.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                                ca.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                ca.REF_COUNT: comfy.conds.CONDConstant(2)}
        return [[text, d]]

    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=2, cfg=6.0, sampler_name="euler", scheduler="simple", latent_image=latent, seed=0)
    out = comfy.sample.sample(patched, noise, positive=cond(i["context"], i["ref_context"]),
                              negative=cond(torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"])), **kwargs)
    assert torch.isfinite(out).all()
    assert {k for k, _, _ in seen} == set(range(tiny["config"]["num_layers"]))
    assert max(b for _, b, _ in seen) == 2  # cond and uncond went through one batched call
    assert {n for _, _, n in seen} == {2 * tiny["config"]["max_text_seq_length"]}
    plain = comfy.sample.sample(patched, noise, positive=cond(i["context"], None, with_ref=False),
                                negative=cond(torch.zeros_like(i["context"]), None, with_ref=False), **kwargs)
    assert not torch.allclose(out, plain, atol=1e-4)


@pytest.mark.parametrize("num_refs", [1, 2])
def test_batched_cfg_equals_separate_calls(pack, tiny, num_refs):
    """ComfyUI's default batched cond + uncond call gives, within float32 noise, what cond and uncond called one
    by one give (ComfyUI's low-memory mode), with the CFG layout: same latent and reference video, texts differ."""
    i = random_inputs(tiny["config"], num_refs=num_refs, seed=21)
    for key in ("x", "ref_latent"):
        i[key] = i[key][:1].expand_as(i[key]).clone()
    patched = pack.vap_core.expert.loading.apply_expert(tiny["base"], tiny["expert"])
    both = _run(pack, patched, i)
    rows = [_run(pack, patched, {k: (v[b:b + 1] if torch.is_tensor(v) and v.shape[0] == 2 else v)
                                 for k, v in i.items()}) for b in (0, 1)]
    torch.testing.assert_close(both, torch.cat(rows), rtol=0, atol=1e-5)
    assert not torch.allclose(rows[0], rows[1], atol=1e-3)  # the texts do act
