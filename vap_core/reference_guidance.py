"""Reference guidance: a guidance term that strengthens (or weakens) the reference video, host-free.

    out = uncond + cfg * (cond - uncond) + reference_scale * (cond - cond_without_reference)

``cond_without_reference`` is the positive prompt through the plain base, without the reference stream (a base
call, cheaper than a VAP call). ``reference_scale = 0`` is the official guidance, and the guider then makes no
extra call. With ``negative_without_reference`` the negative pass drops the reference too, so CFG pushes text and
reference together (``uncond`` is then the plain base on the negative prompt). See docs/REFERENCE_GUIDANCE.md.

Conditioning here is ComfyUI's list of ``[tensor, dict]`` (node level) or of dicts (inside the sampler); the
reference is the ``model_conds`` entries named in ``conds.py``. Nothing here imports ComfyUI.
"""
from __future__ import annotations

from .conds import REFERENCE_ENTRIES, WITHOUT_REFERENCE
from .errors import VAPInputError


def _options(entry):
    return entry[1] if isinstance(entry, (list, tuple)) else entry


def has_reference(conditioning) -> bool:
    """Whether any entry of ``conditioning`` carries a VAP reference."""
    return any(k in _options(e).get("model_conds", {}) for e in conditioning or [] for k in REFERENCE_ENTRIES)


def without_reference(conditioning, marker):
    """Copy of ``conditioning`` with the VAP reference entries removed and ``marker`` (a ComfyUI
    ``CONDConstant(True)``, passed in to keep this module host-free) under ``WITHOUT_REFERENCE``, so the model
    runs its plain base on it. Shallow copies: the tensors are shared, the caller's lists and dicts untouched."""
    out = []
    for entry in conditioning:
        options = dict(_options(entry))
        model_conds = {k: v for k, v in options.get("model_conds", {}).items() if k not in REFERENCE_ENTRIES}
        model_conds[WITHOUT_REFERENCE] = marker
        options["model_conds"] = model_conds
        out.append([entry[0], options] if isinstance(entry, (list, tuple)) else options)
    return out


def check_reference_guidance(positive, reference_scale: float, negative_without_reference: bool) -> None:
    """Reference guidance needs a reference to remove: a clear error instead of a silent no-op."""
    if (reference_scale != 0 or negative_without_reference) and not has_reference(positive):
        raise VAPInputError("reference guidance needs the VAP reference in the conditioning: connect positive and "
                            "negative from a VAP conditioning node (or set reference_scale to 0 and turn "
                            "negative_without_reference off).")


def reference_term(cond, cond_without_reference, reference_scale: float):
    """What the reference guidance adds to the CFG result."""
    return (cond - cond_without_reference) * reference_scale


def combine(cond, uncond, cond_without_reference, cfg: float, reference_scale: float):
    """The whole formula (denoised or velocity: it is affine, so either space gives the same result), in the
    order of operations the guider uses: ComfyUI's CFG expression, then the reference term."""
    return uncond + (cond - uncond) * cfg + reference_term(cond, cond_without_reference, reference_scale)
