"""Zero terminal SNR for ComfyUI's CogVideoX sampling, as the official scheduler has it, without patching core.

The official ``CogVideoXDDIMScheduler`` rescales its betas to zero terminal SNR: alpha_bar(999) is EXACTLY 0, so
the first step's x0 is ``-v`` and its noise estimate is ``x`` itself. ComfyUI's discrete schedule keeps
alpha_bar(999) = 4.9e-8 (sigma 4519; ``comfy.model_sampling.rescale_zero_terminal_snr_sigmas``), which moves the
final latents by ~7e-4 (docs/COGVIDEOX.md#terminal-step). alpha_bar = 0 is sigma = infinity, so here:

* the guider replaces the schedule's terminal sigma (sigma_max) by ``inf`` for its own run only (schedulers,
  percent_to_sigma and every other node keep core's finite schedule);
* an object patch gives the model a copy of its ``model_sampling`` that maps ``inf`` to the last timestep (999)
  and to ``x0 = -v`` (the v-prediction formula at alpha_bar = 0), where core's formula would give inf/inf;
* core's alpha-space DDIM (VOIDSampler) computes alpha_bar = 1 / (1 + inf^2) = 0 by itself, so its step is the
  official one.
"""
from __future__ import annotations

import copy

import torch

import comfy.model_sampling

from ..errors import VAPInputError


class _ZeroTerminalSNR:
    """Mixin over a model's ``model_sampling`` class: sigma = inf is alpha_bar = 0 (the official step 999)."""

    def timestep(self, sigma):
        terminal = torch.isinf(sigma)
        if not terminal.any():
            return super().timestep(sigma)
        t = super().timestep(torch.where(terminal, torch.ones_like(sigma), sigma))
        return torch.where(terminal, torch.full_like(t, len(self.sigmas) - 1), t)

    def calculate_denoised(self, sigma, model_output, model_input):
        terminal = torch.isinf(sigma)
        if not terminal.any():
            return super().calculate_denoised(sigma, model_output, model_input)
        out = super().calculate_denoised(torch.where(terminal, torch.ones_like(sigma), sigma), model_output,
                                         model_input)
        terminal = comfy.model_sampling.reshape_sigma(terminal, model_output.ndim)
        return torch.where(terminal, -model_output, out)   # sqrt(0) * x - sqrt(1 - 0) * v


_CLASSES: dict[type, type] = {}


def zero_terminal_snr_sampling(model_sampling):
    """A copy of ``model_sampling`` (same class and buffers) with the mixin; only for CogVideoX's
    v-prediction DDPM parameterisation, where x0 = sqrt(a) x - sqrt(1 - a) v."""
    base = type(model_sampling)
    if isinstance(model_sampling, _ZeroTerminalSNR):
        return model_sampling
    if not issubclass(base, comfy.model_sampling.V_PREDICTION_DDPM):
        raise VAPInputError(f"zero_terminal_snr is the official CogVideoX schedule (v-prediction DDPM); this model "
                            f"samples with {base.__name__}: turn zero_terminal_snr off for other models.")
    cls = _CLASSES.setdefault(base, type(f"ZeroTerminalSNR{base.__name__}", (_ZeroTerminalSNR, base), {}))
    patched = copy.deepcopy(model_sampling)
    patched.__class__ = cls
    return patched


def with_zero_terminal_snr(model_patcher):
    """A clone of ``model_patcher`` whose ``model_sampling`` understands sigma = inf (an object patch)."""
    patched = model_patcher.clone()
    patched.add_object_patch("model_sampling",
                             zero_terminal_snr_sampling(model_patcher.get_model_object("model_sampling")))
    return patched


def terminal_to_infinity(sigmas: torch.Tensor, model_sampling) -> torch.Tensor:
    """``sigmas`` with core's terminal sigma (sigma_max, alpha_bar 4.9e-8) replaced by inf (alpha_bar 0)."""
    out = sigmas.clone()
    out[out >= model_sampling.sigmas[-1].to(out)] = float("inf")
    return out
