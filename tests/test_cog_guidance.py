"""Dynamic CFG guider and the sampling settings that reproduce the official CogVideoX VAP loop
(docs/OFFICIAL_MODEL.md#cogvideox-sampling): v-prediction, zero-terminal-SNR scaled-linear betas, 50 trailing DDIM steps, dynamic CFG."""
import math

import numpy as np
import pytest
import torch

from cog_fixtures import random_inputs, ref_kwargs, run_diffusion_model, tiny_case

# docs/OFFICIAL_MODEL.md#dynamic-cfg: g=6, N=50, trailing DDIM timesteps 999, 979, ..., 19 (official values, rounded to 2 decimals)
FIRST = [2.29, 2.54, 6.97, 6.42, 2.79, 4.27, 1.04, 4.17]
LAST = [6.21, 1.25, 7.0, 6.86, 1.06, 1.0, 1.0, 1.12]


def official_trailing_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """diffusers ``timestep_spacing='trailing'``: round(arange(T, 0, -T/N)) - 1."""
    return (np.round(np.arange(train_steps, 0, -train_steps / steps)).astype(np.int64) - 1).tolist()


def official_alphas_cumprod() -> torch.Tensor:
    """CogVideoXDDIMScheduler (5B config): scaled_linear 0.00085..0.012, snr_shift 1, zero terminal SNR."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    root = alphas.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root ** 2


def test_formula_reproduces_the_official_sequence():
    from vap_core.cogvideox.dynamic_cfg import dynamic_guidance_scale
    scales = [dynamic_guidance_scale(6.0, t, 50) for t in official_trailing_timesteps(50)]
    assert len(scales) == 50
    assert [round(s, 2) for s in scales[:8]] == FIRST
    assert [round(s, 2) for s in scales[-8:]] == LAST
    assert all(1.0 <= s <= 7.0 for s in scales)
    # the official expression, literally
    t = 979
    assert dynamic_guidance_scale(6.0, t, 50) == 1 + 6.0 * ((1 - math.cos(math.pi * ((50 - t) / 50) ** 5.0)) / 2)


def test_simple_scheduler_walks_the_official_trailing_timesteps(pack):
    """ComfyUI's 'simple' scheduler on CogVideoX's model sampling visits exactly the official timesteps when the
    step count divides 1000 (the official 50 does; 3 does not: 333 instead of 332), and its noise table is the
    official one except the terminal value (ComfyUI keeps alpha_bar(999) = 4.9e-8 instead of 0 to keep sigma
    finite)."""
    import comfy.model_sampling
    import comfy.samplers
    import comfy.supported_models
    config = comfy.supported_models.CogVideoX_I2V({"image_model": "cogvideox", "in_channels": 32,
                                                   "num_attention_heads": 48})
    sampling = comfy.model_sampling.ModelSamplingDiscrete(config)
    def visited(steps):
        sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
        assert sigmas[-1] == 0
        return sampling.timestep(sigmas[:-1]).tolist()
    for steps in (50, 25, 20, 4):
        assert visited(steps) == official_trailing_timesteps(steps)
    assert visited(3) == [999, 666, 333] and official_trailing_timesteps(3) == [999, 666, 332]
    alphas = 1 / (1 + sampling.sigmas.double() ** 2)
    official = official_alphas_cumprod()
    torch.testing.assert_close(alphas[:-1], official[:-1], rtol=1e-5, atol=1e-9)
    assert official[-1] == 0 and 0 < alphas[-1] < 1e-7


@pytest.fixture(scope="module")
def tiny(pack, tmp_path_factory):
    base, expert, cfg = tiny_case(pack, str(tmp_path_factory.mktemp("cog_guidance")), seed=5)
    patched = pack.vap_core.expert.loading.apply_expert(base, expert)
    return {"model": patched, "config": cfg}


def _inputs(config, seed):
    """Random inputs for a CFG batch [uncond, cond] sharing one reference (as the conditioning node gives it)."""
    i = random_inputs(config, num_refs=1, batch=2, seed=seed)
    i["ref_latent"] = i["ref_latent"][:1].repeat(2, 1, 1, 1, 1)
    return i


def _conds(pack, i, image):
    import comfy.conds
    ca = pack.vap_core.cogvideox.apply

    def cond(text, ref_text):
        return [[text, {"concat_latent_image": image,
                        "model_conds": {ca.REF_LATENT: comfy.conds.CONDRegular(i["ref_latent"][:1]),
                                        ca.REF_CONTEXT: comfy.conds.CONDRegular(ref_text),
                                        ca.REF_COUNT: comfy.conds.CONDConstant(1)}}]]
    return (cond(i["context"][1:], i["ref_context"][1:]), cond(i["context"][:1], i["ref_context"][:1]))


def _official_loop(pack, model, i, image_latents, noise, timesteps, alphas, g):
    """The official denoising loop (pipeline_cogvideox_image2video_mot, DDIM, eta 0, dynamic CFG), written
    out independently: one batched [uncond, cond] call per step, guidance on the velocity, CogVideoX DDIM
    update ``prev = a_t * x + b_t * x0`` with the scheduler's own coefficients."""
    x = noise.clone()
    for k, t in enumerate(timesteps):
        x_in = torch.cat([torch.cat([x, x]), torch.cat([image_latents, image_latents])], dim=1)
        ref = ref_kwargs(pack, i["ref_latent"], i["ref_context"])
        v = run_diffusion_model(model, x_in, torch.full((2,), float(t)), i["context"], ref).float()
        v_uncond, v_cond = v.chunk(2)
        scale = 1 + g * ((1 - math.cos(math.pi * ((len(timesteps) - t) / len(timesteps)) ** 5.0)) / 2)
        v = v_uncond + scale * (v_cond - v_uncond)
        a_t = alphas[t]
        a_prev = alphas[timesteps[k + 1]] if k + 1 < len(timesteps) else torch.tensor(1.0, dtype=alphas.dtype)
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * v
        coef_x = ((1 - a_prev) / (1 - a_t)).sqrt()
        x = coef_x * x + (a_prev.sqrt() - a_t.sqrt() * coef_x) * x0
        x = x.float()
    return x


def test_guider_with_void_ddim_and_simple_is_the_official_loop(pack, tiny):
    """VAPDynamicCFGGuider + core VOIDSampler (alpha-space DDIM) + 'simple' scheduler through
    ``SamplerCustomAdvanced``'s code path equals the official loop, given ComfyUI's noise table."""
    import comfy.samplers
    import comfy_extras.nodes_void as void
    model = tiny["model"]
    i = _inputs(tiny["config"], seed=21)
    image = i["x"][:1, 16:, :1].clone()
    steps, g = 4, 6.0
    guider = pack.nodes.cog_guidance.VAPDynamicCFGGuider.execute(model, *_conds(pack, i, image), g, True).args[0]
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    out = guider.sample(noise, latent, void.VOID_DDIM(), sigmas, seed=0, disable_pbar=True)

    timesteps = official_trailing_timesteps(steps)
    assert guider.scales == [1 + g * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2) for t in timesteps]
    alphas = (1 / (1 + sampling.sigmas.double() ** 2))
    scale = model.model.latent_format.scale_factor
    image_latents = torch.cat([image * scale, torch.zeros_like(i["x"][:1, 16:, 1:])], dim=2)
    expected = _official_loop(pack, model, i, image_latents, noise, timesteps, alphas, g)
    # the sampler hands back process_latent_out(x) = x / scale, what the official decode step divides by too
    torch.testing.assert_close(out * scale, expected, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all()


def test_constant_cfg_when_dynamic_is_off(pack, tiny):
    import comfy.samplers
    import comfy_extras.nodes_void as void
    model = tiny["model"]
    i = _inputs(tiny["config"], seed=22)
    image = i["x"][:1, 16:, :1].clone()
    guider = pack.nodes.cog_guidance.VAPDynamicCFGGuider.execute(model, *_conds(pack, i, image), 4.5, False).args[0]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 2)
    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    guider.sample(torch.randn(latent.shape), latent, void.VOID_DDIM(), sigmas, seed=0, disable_pbar=True)
    assert guider.scales == [4.5, 4.5]


def test_zero_terminal_snr_is_the_official_first_step(pack, tiny):
    """zero_terminal_snr: the loop runs at the official alpha_bar(999) = 0 (step 0: x0 = -v, noise estimate = x)
    through core's VOIDSampler; off, core's 4.9e-8 measurably differs from that loop."""
    import comfy.samplers
    import comfy_extras.nodes_void as void
    model = tiny["model"]
    i = _inputs(tiny["config"], seed=23)
    image = i["x"][:1, 16:, :1].clone()
    steps, g = 4, 6.0
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
    latent = torch.zeros(1, 16, *i["x"].shape[2:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(8))
    outs = {}
    for zsnr in (True, False):
        guider = pack.nodes.cog_guidance.VAPDynamicCFGGuider.execute(model, *_conds(pack, i, image), g, True,
                                                                     zsnr).args[0]
        outs[zsnr] = guider.sample(noise, latent, void.VOID_DDIM(), sigmas, seed=0, disable_pbar=True)
        timesteps = official_trailing_timesteps(steps)
        assert guider.scales == [1 + g * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)
                                 for t in timesteps]
    # core's table elsewhere (alpha_bar at t < 999 agrees with the official to 1e-7 relative), the official 0 at 999
    alphas = 1 / (1 + sampling.sigmas.double() ** 2)
    alphas[-1] = 0.0
    scale = model.model.latent_format.scale_factor
    image_latents = torch.cat([image * scale, torch.zeros_like(i["x"][:1, 16:, 1:])], dim=2)
    expected = _official_loop(pack, model, i, image_latents, noise, official_trailing_timesteps(steps), alphas, g)
    on = (outs[True] * scale - expected).abs().max().item()
    off = (outs[False] * scale - expected).abs().max().item()
    assert on < 2e-5, on          # float32 arithmetic of core's alpha-space DDIM vs the official coefficients
    assert off > 10 * on, (on, off)
    # the schedule the other nodes see is untouched: the object patch lives on the guider's clone only
    assert torch.isfinite(model.get_model_object("model_sampling").sigmas).all()


def test_zero_terminal_snr_sampling_maps_infinity(pack):
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models
    ts = pack.vap_core.cogvideox.terminal_snr
    config = comfy.supported_models.CogVideoX_I2V({"image_model": "cogvideox", "in_channels": 32,
                                                   "num_attention_heads": 48})
    sampling = pack.vap_core.cogvideox.terminal_snr.zero_terminal_snr_sampling(
        comfy.model_base.model_sampling(config, comfy.model_base.ModelType.V_PREDICTION_DDPM))
    sigma = torch.tensor([float("inf"), sampling.sigmas[749].item()])
    assert sampling.timestep(sigma).tolist() == [999, 749]
    v, x = torch.randn(2, 3), torch.randn(2, 3)
    denoised = sampling.calculate_denoised(sigma, v, x)
    assert torch.equal(denoised[0], -v[0])
    a = 1 / (1 + sigma[1] ** 2)
    torch.testing.assert_close(denoised[1], a.sqrt() * x[1] - (1 - a).sqrt() * v[1])
    sigmas = torch.tensor([sampling.sigmas[-1].item(), 1.0, 0.0])
    assert ts.terminal_to_infinity(sigmas, sampling).tolist() == [float("inf"), 1.0, 0.0]
    from comfyui_vap.vap_core.errors import VAPInputError
    flow = comfy.model_sampling.ModelSamplingDiscreteFlow()
    with pytest.raises(VAPInputError, match="zero_terminal_snr off"):
        ts.zero_terminal_snr_sampling(flow)
