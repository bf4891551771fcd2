"""Reference guidance (vap_core/reference_guidance.py, vap_core/reference_guider.py, node VAPReferenceGuider):
reference_scale 0 is core CFGGuider (Wan) / the dynamic CFG guider (CogVideoX) bit for bit with no extra call;
reference_scale s is the formula computed from three separate model calls; the extra pass never calls the expert."""
import math

import pytest
import torch

import cog_fixtures
from wan_fixtures import convert_and_load, random_inputs, write_official_folder

WAN_CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}


# ---------------------------------------------------------------------------------------------- host-free

def test_without_reference_drops_only_the_reference_and_marks_the_copy():
    from vap_core import conds, reference_guidance as rg
    target, ref = object(), object()
    positive = [["text", {"concat_latent_image": target,
                          "model_conds": {conds.REF_LATENT: ref, conds.REF_CONTEXT: ref, conds.REF_CLIP: ref,
                                          conds.REF_COUNT: ref, "other": target}}]]
    marker = object()
    out = rg.without_reference(positive, marker)
    assert out[0][0] == "text" and out[0][1]["concat_latent_image"] is target
    assert out[0][1]["model_conds"] == {"other": target, conds.WITHOUT_REFERENCE: marker}
    assert set(positive[0][1]["model_conds"]) == {*conds.REFERENCE_ENTRIES, "other"}  # the input is untouched
    assert rg.has_reference(positive) and not rg.has_reference(out) and not rg.has_reference([["t", {}]])


def test_reference_guidance_without_a_reference_is_a_clear_error():
    from vap_core import reference_guidance as rg
    from vap_core.errors import VAPInputError
    rg.check_reference_guidance([["t", {}]], 0.0, False)  # off: anything goes (the official guidance)
    for scale, drop in ((1.0, False), (0.0, True)):
        with pytest.raises(VAPInputError, match="VAP conditioning node"):
            rg.check_reference_guidance([["t", {}]], scale, drop)


def test_formula():
    from vap_core.reference_guidance import combine
    cond, uncond, without = torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([2.5])
    assert combine(cond, uncond, without, 5.0, 0.0).item() == 1 + 5 * 2
    assert combine(cond, uncond, without, 5.0, 2.0).item() == 1 + 5 * 2 + 2 * 0.5


# ---------------------------------------------------------------------------------------------- helpers

def _capture_sampler(store):
    """One model call at the first sigma; keeps the guided prediction the guider returned."""
    import comfy.samplers

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        denoised = model(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        store.append(denoised.clone())
        return denoised
    return comfy.samplers.KSAMPLER(sample)


def _guided(guider, latent, noise, sigmas):
    store = []
    guider.sample(noise, latent, _capture_sampler(store), sigmas, seed=0, disable_pbar=True)
    return store[0]


def _single(guider_model, conds, latent, noise, sigmas):
    """The prediction of ONE cond in its own model call: core CFGGuider at cfg 1 skips the negative and returns
    0 + (cond - 0) * 1.0 = cond exactly."""
    import comfy.samplers
    g = comfy.samplers.CFGGuider(guider_model)
    g.set_conds(conds, conds)
    g.set_cfg(1.0)
    return _guided(g, latent, noise, sigmas)


class CallLog:
    """Forward calls into the base's diffusion model (with their batch size) and into any expert module,
    in order: which base call ran the expert."""

    def __init__(self, base_module, expert_module):
        self.events, self.handles = [], []
        self.handles.append(base_module.register_forward_pre_hook(lambda m, a: self.events.append(("base", a[0].shape[0]))))
        for sub in expert_module.modules():
            if not list(sub.children()):  # leaves: every expert computation goes through one
                self.handles.append(sub.register_forward_pre_hook(lambda m, a: self.events.append(("expert", None))))

    def calls(self):
        """[(batch size, expert leaf calls during that base call)]"""
        out = []
        for kind, batch in self.events:
            if kind == "base":
                out.append([batch, 0])
            else:
                out[-1][1] += 1
        return [tuple(c) for c in out]

    def close(self):
        for h in self.handles:
            h.remove()


def _node(pack, model, positive, negative, cfg, scale, drop=False, dynamic=False):
    return pack.nodes.reference_guider.VAPReferenceGuider.execute(model, positive, negative, cfg, scale, drop,
                                                                   dynamic).args[0]


# ---------------------------------------------------------------------------------------------- Wan

@pytest.fixture(scope="module")
def wan(pack, tmp_path_factory):
    from vap_headless.demo.tiny_wan import official_wan_mot_state_dict
    tmp = tmp_path_factory.mktemp("ref_guidance_wan")
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=3)
    write_official_folder(str(tmp / "vap"), sd, cfg)
    base, expert, _ = convert_and_load(pack, str(tmp / "vap"), str(tmp))
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    i = random_inputs(cfg, seed=4)
    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.9, 0.5, 0.2, 0.0])
    return {"base": base, "expert": expert, "model": patched, "i": i, "latent": latent, "noise": noise,
            "sigmas": sigmas}


def _wan_cond(pack, i, text, ref_text, with_ref=True):
    import comfy.clip_vision
    import comfy.conds
    wa = pack.vap_core.wan.apply
    d = {"clip_vision_output": comfy.clip_vision.Output(), "concat_latent_image": i["x"][:, 20:],
         "concat_mask": torch.zeros(1, 1, *i["x"].shape[2:])}
    d["clip_vision_output"].penultimate_hidden_states = i["clip"]
    if with_ref:
        d["model_conds"] = {wa.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"]),
                            wa.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                            wa.REF_CLIP: comfy.conds.CONDRegular(i["ref_clip"])}
    return [[text, d]]


def _wan_conds(pack, i, with_ref=True):
    positive = _wan_cond(pack, i, i["context"], i["ref_context"], with_ref)
    negative = _wan_cond(pack, i, torch.zeros_like(i["context"]), torch.zeros_like(i["ref_context"]), with_ref)
    return positive, negative


def _sample(guider, w, sampler="euler"):
    import comfy.samplers
    return guider.sample(w["noise"], w["latent"], comfy.samplers.sampler_object(sampler), w["sigmas"], seed=0,
                         disable_pbar=True)


def test_wan_scale_zero_is_core_cfg_guider_bit_for_bit_and_adds_no_call(pack, wan):
    import comfy.samplers
    positive, negative = _wan_conds(pack, wan["i"])
    core = comfy.samplers.CFGGuider(wan["model"])
    core.set_conds(positive, negative)
    core.set_cfg(5.0)
    log = CallLog(wan["model"].model.diffusion_model, wan["expert"].module)
    try:
        expected = _sample(core, wan)
        core_calls = log.calls()
        log.events.clear()
        out = _sample(_node(pack, wan["model"], positive, negative, 5.0, 0.0), wan)
        assert log.calls() == core_calls
    finally:
        log.close()
    assert torch.equal(out, expected)
    assert [(b, n > 0) for b, n in core_calls] == [(2, True)] * 3  # one batched VAP call per step


def test_wan_reference_scale_is_the_formula_of_three_separate_calls(pack, wan):
    i, model = wan["i"], wan["model"]
    positive, negative = _wan_conds(pack, i)
    args = wan["latent"], wan["noise"], wan["sigmas"]
    cfg, scale = 5.0, 1.5
    guided = _guided(_node(pack, model, positive, negative, cfg, scale), *args)
    cond = _single(model, positive, *args)
    uncond = _single(model, negative, *args)
    # the plain base, loaded by ComfyUI without any expert, on the positive prompt without the reference
    without = _single(wan["base"], _wan_conds(pack, i, with_ref=False)[0], *args)
    assert not torch.allclose(cond, without, atol=1e-3)  # the reference does act, so the term is not zero
    torch.testing.assert_close(guided, uncond + (cond - uncond) * cfg + (cond - without) * scale, rtol=1e-5, atol=1e-5)
    official = _guided(_node(pack, model, positive, negative, cfg, 0.0), *args)
    assert not torch.allclose(guided, official, atol=1e-3)


def test_wan_extra_pass_runs_the_base_only(pack, wan):
    positive, negative = _wan_conds(pack, wan["i"])
    log = CallLog(wan["model"].model.diffusion_model, wan["expert"].module)
    try:
        _sample(_node(pack, wan["model"], positive, negative, 5.0, 1.0), wan)
        with_scale = log.calls()
        log.events.clear()
        _sample(_node(pack, wan["model"], positive, negative, 5.0, 1.0, drop=True), wan)
        both = log.calls()
    finally:
        log.close()
    # per step: the batched VAP call (cond + uncond, expert used; the reference stream's step-independent part is
    # cached after the first step) and one base call (batch 1) that touches no expert module
    assert sorted((b, n > 0) for b, n in with_scale) == [(1, False)] * 3 + [(2, True)] * 3
    # negative without reference: negative and positive-without-reference batch into one base call
    assert sorted((b, n > 0) for b, n in both) == [(1, True)] * 3 + [(2, False)] * 3


def test_wan_negative_without_reference_is_cfg_against_the_base(pack, wan):
    i, model = wan["i"], wan["model"]
    positive, negative = _wan_conds(pack, i)
    args = wan["latent"], wan["noise"], wan["sigmas"]
    guided = _guided(_node(pack, model, positive, negative, 4.0, 0.0, drop=True), *args)
    cond = _single(model, positive, *args)
    uncond = _single(wan["base"], _wan_conds(pack, i, with_ref=False)[1], *args)
    torch.testing.assert_close(guided, uncond + (cond - uncond) * 4.0, rtol=1e-5, atol=1e-5)


def test_wan_cfg_one_skips_the_negative(pack, wan):
    """cfg 1: like core, the negative is not run; out = cond + s * (cond - cond_without_reference)."""
    i, model = wan["i"], wan["model"]
    positive, negative = _wan_conds(pack, i)
    args = wan["latent"], wan["noise"], wan["sigmas"]
    log = CallLog(model.model.diffusion_model, wan["expert"].module)
    try:
        guided = _guided(_node(pack, model, positive, negative, 1.0, 2.0), *args)
        calls = log.calls()
    finally:
        log.close()
    assert sorted(b for b, _ in calls) == [1, 1]
    cond = _single(model, positive, *args)
    without = _single(wan["base"], _wan_conds(pack, i, with_ref=False)[0], *args)
    torch.testing.assert_close(guided, cond + (cond - without) * 2.0, rtol=1e-5, atol=1e-5)


def test_wan_post_cfg_functions_see_the_reference_term(pack, wan):
    """Core's post-CFG hooks (e.g. RescaleCFG) run once, on the result that includes the reference term."""
    positive, negative = _wan_conds(pack, wan["i"])
    model = wan["model"].clone()
    seen = []

    def post(args):
        seen.append(args["denoised"].clone())
        return args["denoised"] * 2
    model.set_model_sampler_post_cfg_function(post)
    args = wan["latent"], wan["noise"], wan["sigmas"]
    out = _guided(_node(pack, model, positive, negative, 5.0, 1.5), *args)
    plain = _guided(_node(pack, wan["model"], positive, negative, 5.0, 1.5), *args)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], plain, rtol=0, atol=0)
    torch.testing.assert_close(out, plain * 2, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- CogVideoX

@pytest.fixture(scope="module")
def cog(pack, tmp_path_factory):
    base, expert, cfg = cog_fixtures.tiny_case(pack, str(tmp_path_factory.mktemp("ref_guidance_cog")), seed=5)
    i = cog_fixtures.random_inputs(cfg, num_refs=1, batch=2, seed=21)
    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    return {"base": base, "expert": expert, "model": pack.vap_core.expert.loading.apply_expert(base, expert),
            "i": i, "image": i["x"][:1, 16:, :1].clone(), "latent": latent, "noise": noise}


def _cog_conds(pack, c):
    import comfy.conds
    ca = pack.vap_core.cogvideox.apply
    i = c["i"]

    def cond(text, ref_text):
        return [[text, {"concat_latent_image": c["image"],
                        "model_conds": {ca.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"][:1]),
                                        ca.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                        ca.REF_COUNT: comfy.conds.CONDConstant(1)}}]]
    return cond(i["context"][1:], i["ref_context"][1:]), cond(i["context"][:1], i["ref_context"][:1])


def _sigmas(model, steps):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)


def _dynamic_guider_before_reference_guidance(pack):
    """The dynamic CFG guider as it was written before reference guidance (core CFGGuider + the official scale)."""
    import comfy.samplers
    scale_of = pack.vap_core.cogvideox.dynamic_cfg.dynamic_guidance_scale

    class Before(comfy.samplers.CFGGuider):
        def outer_sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
            self.steps = len(sigmas) - 1
            return super().outer_sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            t = float(self.inner_model.model_sampling.timestep(timestep.reshape(-1)[:1]).item())
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None),
                                                    self.conds.get("positive", None),
                                                    scale_of(self.cfg, t, self.steps), model_options=model_options,
                                                    seed=seed)
    return Before


def test_cog_scale_zero_is_the_dynamic_cfg_guider_bit_for_bit(pack, cog):
    import comfy_extras.nodes_void as void
    model = cog["model"]
    positive, negative = _cog_conds(pack, cog)
    sigmas = _sigmas(model, 4)

    def run(guider):
        return guider.sample(cog["noise"], cog["latent"], void.VOID_DDIM(), sigmas, seed=0, disable_pbar=True)
    before = _dynamic_guider_before_reference_guidance(pack)(model)
    before.set_conds(positive, negative)
    before.set_cfg(6.0)
    expected = run(before)
    shipped = pack.nodes.cog_guidance.VAPDynamicCFGGuider.execute(model, positive, negative, 6.0, True).args[0]
    log = CallLog(model.model.diffusion_model, cog["expert"].module)
    try:
        assert torch.equal(run(shipped), expected)
        calls = log.calls()
        log.events.clear()
        guider = _node(pack, model, positive, negative, 6.0, 0.0, dynamic=True)
        assert torch.equal(run(guider), expected)
        assert log.calls() == calls and [b for b, _ in calls] == [2] * 4
    finally:
        log.close()
    assert guider.scales == shipped.scales and len(set(guider.scales)) > 1  # dynamic: the scale changes


def test_cog_reference_scale_is_the_formula_of_three_separate_calls(pack, cog):
    model = cog["model"]
    positive, negative = _cog_conds(pack, cog)
    sigmas = _sigmas(model, 4)[1:]  # a step where the official dynamic scale is not 1
    args = cog["latent"], cog["noise"], sigmas
    scale = 1.5
    guider = _node(pack, model, positive, negative, 6.0, scale, dynamic=True)
    guided = _guided(guider, *args)
    (g,) = guider.scales
    t = float(model.get_model_object("model_sampling").timestep(sigmas[:1]).item())
    assert g == pack.vap_core.cogvideox.dynamic_cfg.dynamic_guidance_scale(6.0, t, len(sigmas) - 1) and g != 1.0
    cond = _single(model, positive, *args)
    uncond = _single(model, negative, *args)
    # the official base without the reference: the same model with the expert switched off for this step
    expert_off = pack.vap_core.expert.loading.apply_expert(cog["base"], cog["expert"], start=0.5, end=1.0)
    without = _single(expert_off, positive, *args)
    assert not torch.allclose(cond, without, atol=1e-4)
    torch.testing.assert_close(guided, uncond + (cond - uncond) * g + (cond - without) * scale, rtol=1e-5, atol=1e-5)


def test_cog_extra_pass_runs_the_base_only(pack, cog):
    model = cog["model"]
    positive, negative = _cog_conds(pack, cog)
    sigmas = _sigmas(model, 2)
    log = CallLog(model.model.diffusion_model, cog["expert"].module)
    try:
        _guided(_node(pack, model, positive, negative, 6.0, 1.0, dynamic=True), cog["latent"], cog["noise"], sigmas)
        calls = log.calls()
    finally:
        log.close()
    assert sorted((b, n > 0) for b, n in calls) == [(1, False), (2, True)]
