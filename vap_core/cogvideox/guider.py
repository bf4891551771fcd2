"""The official CogVideoX VAP dynamic CFG (``dynamic_cfg``) as a ComfyUI guider for SamplerCustomAdvanced."""
from __future__ import annotations

from .dynamic_cfg import dynamic_guidance_scale
from ..reference_guider import ReferenceGuider
from .terminal_snr import terminal_to_infinity, with_zero_terminal_snr


class DynamicCFGGuider(ReferenceGuider):
    """``CFGGuider`` whose scale follows ``dynamic_guidance_scale`` (or stays fixed with ``dynamic=False``), with
    the optional reference guidance of ``ReferenceGuider`` (off by default: then exactly the official guidance).

    ``t`` is the model's discrete timestep of the current sigma (``model_sampling.timestep``), ``N`` the number of
    steps of the sigmas handed to the sampler. Guidance is applied by ComfyUI's ``sampling_function`` on the
    denoised prediction, which for a v-prediction model equals the official guidance on the velocity (both
    are the same affine function of the model output for cond and uncond).

    ``zero_terminal_snr``: the first step at alpha_bar(999) = 0 as the official scheduler (``terminal_snr``)."""

    def __init__(self, model_patcher, dynamic: bool = True, zero_terminal_snr: bool = False,
                 reference_scale: float = 0.0, negative_without_reference: bool = False):
        self.zero_terminal_snr = bool(zero_terminal_snr)
        super().__init__(with_zero_terminal_snr(model_patcher) if self.zero_terminal_snr else model_patcher,
                         reference_scale, negative_without_reference)
        self.dynamic = dynamic
        self.steps = None
        self.scales: list[float] = []   # the scale used at each model call of the last run (for inspection)

    def outer_sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        self.steps = len(sigmas) - 1
        self.scales = []
        if self.zero_terminal_snr:
            sigmas = terminal_to_infinity(sigmas, self.model_patcher.get_model_object("model_sampling"))
        return super().outer_sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def scale_at(self, sigma) -> float:
        if not self.dynamic:
            return self.cfg
        timestep = float(self.inner_model.model_sampling.timestep(sigma.reshape(-1)[:1]).item())
        return dynamic_guidance_scale(self.cfg, timestep, self.steps)

    def guidance_scale(self, timestep) -> float:
        scale = self.scale_at(timestep)
        self.scales.append(scale)
        return scale
