"""Core context windows (``ContextWindowsManual``, ``WanContextWindowsManual``) on a VAP model.

Core's ``IndexListContextHandler`` runs the model once per window of the target latent and slices, for each window,
every conditioning tensor whose temporal size equals the target's. The VAP reference is not a per-frame condition of
the target: every window must see the WHOLE reference (docs/HOST_INTEGRATION.md#context-windows). A reference with as
many latent frames as the target (what the conditioning nodes build by default) would otherwise be cut into the
window's frames. So while sampling, the handler gets a ``RESIZE_COND_ITEM`` callback (core asks its callbacks before
its own slicing and, on newer hosts, before the model's ``resize_cond_for_context_window``) that hands the reference
entries over whole. The target's own conds (Wan I2V ``c_concat``: start image + mask) stay with core's slicing, as for
plain Wan I2V.
"""
from __future__ import annotations

import torch

import comfy.patcher_extension

from ..conds import REF_CLIP, REF_CONTEXT, REF_COUNT, REF_LATENT
from ..errors import VAPModelMismatch

REFERENCE_CONDS = frozenset((REF_LATENT, REF_CONTEXT, REF_CLIP, REF_COUNT))
CALLBACK_KEY = "vap_expert"


def keep_reference_whole(cond_key, cond_value, window, x_in, device, cond_dict=None):
    """``RESIZE_COND_ITEM`` callback: a VAP reference entry unchanged (moved to ``device`` when given); ``None``
    (core handles it) for every other entry."""
    if cond_key not in REFERENCE_CONDS:
        return None
    cond = getattr(cond_value, "cond", None)
    if isinstance(cond, torch.Tensor) and device is not None:
        return cond_value._copy_with(cond.to(device))
    return cond_value


def _resize_callback_type():
    import comfy.context_windows
    return getattr(getattr(comfy.context_windows, "IndexListCallbacks", None), "RESIZE_COND_ITEM", None)


def keep_reference_whole_in(model_options: dict) -> None:
    """Register ``keep_reference_whole`` on the context handler of ``model_options`` (a sampling run's options),
    once. No handler: nothing to do. A handler that cannot take the callback is refused: it would slice the
    reference."""
    handler = model_options.get("context_handler")
    if handler is None:
        return
    resize = _resize_callback_type()
    callbacks = getattr(handler, "callbacks", None)
    if resize is None or not isinstance(callbacks, dict):
        raise VAPModelMismatch(
            f"the context windows in this graph ({type(handler).__name__}) cannot be told to keep the VAP reference "
            "whole, so every window would get a slice of it. Use core 'Context Windows (Manual)' or 'WAN Context "
            "Windows' on an up-to-date ComfyUI, or remove the context-window node.")
    if keep_reference_whole not in comfy.patcher_extension.get_callbacks_with_key(resize, CALLBACK_KEY, callbacks):
        comfy.patcher_extension.add_callback_with_key(resize, CALLBACK_KEY, keep_reference_whole, callbacks)


def in_context_window(transformer_options) -> bool:
    """Whether this model call is one window of core's context windows."""
    return (transformer_options or {}).get("context_window") is not None
