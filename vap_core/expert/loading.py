"""Variant dispatch for loading and applying experts (the nodes' single entry point)."""
from __future__ import annotations

from ..formats.checkpoint import COG, WAN
from ..errors import VAPFormatError
from ..formats.expert_file import read_expert


def load_expert(path: str):
    sd, metadata = read_expert(path)
    variant = metadata.get("vap_variant")
    if variant == WAN:
        from ..wan.apply import build_wan_expert
        return build_wan_expert(sd, metadata, source=path)
    if variant == COG:
        from ..cogvideox.apply import build_cog_expert
        return build_cog_expert(sd, metadata, source=path)
    raise VAPFormatError(f"'{path}': unknown VAP variant '{variant}'. Convert the official checkpoint again.")


def apply_expert(model, expert, start: float = 0.0, end: float = 1.0):
    """``start``/``end``: fraction of the sampling schedule in which the expert runs (default: all)."""
    if expert.variant == WAN:
        from ..wan.apply import apply_expert as apply_wan
        return apply_wan(model, expert, start, end)
    from ..cogvideox.apply import apply_expert as apply_cog
    return apply_cog(model, expert, start, end)
