"""Variant dispatch for loading and applying experts (the nodes' single entry point)."""
from __future__ import annotations

from ..formats.checkpoint import COG, WAN
from ..errors import VAPFormatError
from ..formats.expert_file import read_expert


def load_expert(path: str, weight_dtype: str = "default"):
    """The expert in ``path``; ``weight_dtype`` as core's UNETLoader: "default" (the file's dtypes),
    "fp8_e4m3fn", "fp8_e4m3fn_fast" or "fp8_e5m2" (see weight_dtype.py)."""
    from .weight_dtype import apply_weight_dtype, model_options
    model_options(weight_dtype)  # refuse an unknown choice before reading the file
    sd, metadata = read_expert(path)
    variant = metadata.get("vap_variant")
    if variant == WAN:
        from ..wan.apply import build_wan_expert
        return apply_weight_dtype(build_wan_expert(sd, metadata, source=path), weight_dtype)
    if variant == COG:
        from ..cogvideox.apply import build_cog_expert
        return apply_weight_dtype(build_cog_expert(sd, metadata, source=path), weight_dtype)
    raise VAPFormatError(f"'{path}': unknown VAP variant '{variant}'. Convert the official checkpoint again.")


def apply_expert(model, expert, start: float = 0.0, end: float = 1.0):
    """``start``/``end``: fraction of the sampling schedule in which the expert runs (default: all)."""
    if expert.variant == WAN:
        from ..wan.apply import apply_expert as apply_wan
        return apply_wan(model, expert, start, end)
    from ..cogvideox.apply import apply_expert as apply_cog
    return apply_cog(model, expert, start, end)
