"""Dynamic classifier-free guidance of the official CogVideoX VAP demo, as a ComfyUI guider.

The official pipeline (``use_dynamic_cfg=True``, inherited from diffusers' CogVideoX pipelines) sets, before
every step, ``g_t = 1 + g * (1 - cos(pi * ((N - t) / N) ** 5)) / 2`` with ``t`` the scheduler TIMESTEP VALUE
(999, 979, ..., 19 for 50 trailing DDIM steps) and ``N`` the number of steps. The formula was written for a
step counter 0..N; fed timesteps, ``((N - t) / N) ** 5`` is a large negative number and the scale jumps
between 1 and 1 + g from step to step (docs/OFFICIAL_MODEL.md#dynamic-cfg). The released model was demoed with exactly this, so
it is reproduced as is, quirk included.
"""
from __future__ import annotations

import math


def dynamic_guidance_scale(scale: float, timestep: float, steps: int) -> float:
    """The official per-step guidance scale (python floats, like the official ``math`` call)."""
    return 1 + scale * (1 - math.cos(math.pi * ((steps - timestep) / steps) ** 5.0)) / 2
