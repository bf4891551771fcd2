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
    sd, metadata = read_expert(path, _load_file)
    variant = metadata.get("vap_variant")
    if variant == WAN:
        from ..wan.apply import build_wan_expert as build
    elif variant == COG:
        from ..cogvideox.apply import build_cog_expert as build
    else:
        raise VAPFormatError(f"'{path}': unknown VAP variant '{variant}'. Convert the official checkpoint again.")
    expert = apply_weight_dtype(build(sd, metadata, source=path), weight_dtype)
    # how ComfyUI reloads a model for another GPU (multi-GPU deep clones), as core loaders register theirs
    expert.patcher.cached_patcher_init = (load_expert_patcher, (path, weight_dtype))
    return expert


def _load_file(path: str) -> dict:
    """The file's tensors through ComfyUI's own loader: memory-mapped (the weights are the file's pages, held
    once; bench/results/convert_fullsize.md) and, in ComfyUI's dynamic-VRAM mode, tagged with the file offsets
    that mode reads weights from."""
    import comfy.utils
    return comfy.utils.load_torch_file(path)


def load_expert_patcher(path: str, weight_dtype: str = "default", **_host_options):
    """The expert's ModelPatcher freshly loaded from ``path`` (``cached_patcher_init`` factory)."""
    return load_expert(path, weight_dtype).patcher


def apply_expert(model, expert, start: float = 0.0, end: float = 1.0):
    """``start``/``end``: fraction of the sampling schedule in which the expert runs (default: all)."""
    if expert.variant == WAN:
        from ..wan.apply import apply_expert as apply_wan
        return apply_wan(model, expert, start, end)
    from ..cogvideox.apply import apply_expert as apply_cog
    return apply_cog(model, expert, start, end)
