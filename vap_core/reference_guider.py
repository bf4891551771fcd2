"""The reference guidance (``reference_guidance.py``) as a ComfyUI guider for SamplerCustomAdvanced.

``ReferenceGuider`` is core's ``CFGGuider`` plus two settings. With ``reference_scale = 0`` and
``negative_without_reference`` off it holds exactly core's two conds and calls core's ``sampling_function``
with them: bit-identical to ``CFGGuider``, no extra model call. Otherwise it builds copies of the conds without
the reference (``without_reference``), which the VAP wrapper runs through the plain base only (no expert call),
and ComfyUI batches them like any other cond.
"""
from __future__ import annotations

import math

import comfy.conds
import comfy.samplers

from .reference_guidance import check_reference_guidance, reference_term, without_reference

POSITIVE_WITHOUT_REFERENCE = "positive_without_reference"  # the third cond set, next to core's positive/negative


class ReferenceGuider(comfy.samplers.CFGGuider):
    def __init__(self, model_patcher, reference_scale: float = 0.0, negative_without_reference: bool = False):
        super().__init__(model_patcher)
        self.reference_scale = float(reference_scale)
        self.negative_without_reference = bool(negative_without_reference)

    def set_conds(self, positive, negative):
        check_reference_guidance(positive, self.reference_scale, self.negative_without_reference)
        marker = comfy.conds.CONDConstant(True)
        conds = {"positive": positive,
                 "negative": without_reference(negative, marker) if self.negative_without_reference else negative}
        if self.reference_scale != 0:
            conds[POSITIVE_WITHOUT_REFERENCE] = without_reference(positive, marker)
        self.inner_set_conds(conds)

    def guidance_scale(self, timestep) -> float:
        """The CFG scale at this call (constant here; the CogVideoX guider makes it dynamic)."""
        return self.cfg

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        scale = self.guidance_scale(timestep)
        positive, negative = self.conds.get("positive", None), self.conds.get("negative", None)
        extra = self.conds.get(POSITIVE_WITHOUT_REFERENCE, None)
        if extra is None:  # core's own path: bit-identical to CFGGuider (and no extra call)
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, negative, positive, scale,
                                                    model_options=model_options, seed=seed)
        return reference_sampling_function(self.inner_model, x, timestep, negative, positive, extra, scale,
                                           self.reference_scale, model_options=model_options)


def reference_sampling_function(model, x, timestep, uncond, cond, cond_without_reference, cond_scale,
                                reference_scale, model_options={}):
    """Core's ``sampling_function`` with a third cond: the three are batched by ComfyUI (the conds without
    reference have other entries, so they run in their own model call), core's ``cfg_function`` guides cond and
    uncond (custom CFG functions included), the reference term is added, then core's post-CFG functions run."""
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None  # core's cfg-1 shortcut: its uncond prediction is 0 and (cond - 0) * 1.0 == cond
    else:
        uncond_ = uncond
    conds = [cond, uncond_, cond_without_reference]
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = model_options["sampler_calc_cond_batch_function"](args)
    else:
        out = comfy.samplers.calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
    cond_pred, uncond_pred, without_pred = out[0], out[1], out[2]

    post_cfg = model_options.get("sampler_post_cfg_function", [])
    options = {**model_options, "sampler_post_cfg_function": []} if post_cfg else model_options
    result = comfy.samplers.cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options=options,
                                         cond=cond, uncond=uncond_)
    result = result + reference_term(cond_pred, without_pred, reference_scale)
    for fn in post_cfg:  # as core's cfg_function calls them, on the result including the reference term
        args = {"denoised": result, "cond": cond, "uncond": uncond_, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        result = fn(args)
    return result
