"""ComfyUI-GGUF (city96) for the tests: finding the community pack, importing it as ComfyUI imports a custom-node
folder, and writing a Q8_0 GGUF of a native Wan base in the layout its ``UnetLoaderGGUF`` reads.

The pack is not vendored and CI cannot fetch it: it is looked for in ``COMFYUI_GGUF_PATH``, then the host's
``custom_nodes/ComfyUI-GGUF``, then ``~/ComfyUI-GGUF``; tests skip with the reason where none holds it or where
the ``gguf`` package (its one requirement) is missing.
"""
from __future__ import annotations

import os

import host

FOLDER_NAME = "ComfyUI-GGUF"


def _is_gguf_pack(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("__init__.py", "nodes.py", "loader.py"))


def find_gguf_pack() -> tuple[str | None, str]:
    """(folder or None, where it was looked for)."""
    env = os.environ.get("COMFYUI_GGUF_PATH")
    if env:
        if _is_gguf_pack(env):
            return os.path.abspath(env), f"COMFYUI_GGUF_PATH={env}"
        return None, f"COMFYUI_GGUF_PATH={env} is not a ComfyUI-GGUF checkout (no __init__.py, nodes.py, loader.py)"
    candidates = []
    if host.COMFYUI_PATH:
        candidates.append(os.path.join(host.COMFYUI_PATH, "custom_nodes", FOLDER_NAME))
    candidates.append(os.path.expanduser(os.path.join("~", FOLDER_NAME)))
    for path in candidates:
        if _is_gguf_pack(path):
            return os.path.abspath(path), path
    return None, ("ComfyUI-GGUF (github.com/city96/ComfyUI-GGUF) not found: clone it and set COMFYUI_GGUF_PATH, or "
                  f"put it in {' or '.join(candidates)}")


def skip_reason() -> str | None:
    """Why the GGUF tests cannot run here (None: they can)."""
    if host.COMFYUI_PATH is None:
        return f"ComfyUI host not found: {host.HOW_FOUND}"
    path, how = find_gguf_pack()
    if path is None:
        return how
    try:
        import gguf  # noqa: F401
    except ImportError:
        return "the 'gguf' package (ComfyUI-GGUF's requirement) is not installed: pip install gguf"
    return None


def load_gguf_nodes() -> dict:
    """Import ComfyUI-GGUF the way ComfyUI's start-up does (``nodes.load_custom_node`` on the folder) and return
    ComfyUI's node mappings, which then hold its nodes (``UnetLoaderGGUF``). Call after ``host.import_host()``."""
    import asyncio

    import nodes
    path, how = find_gguf_pack()
    if path is None:
        raise RuntimeError(how)
    if "UnetLoaderGGUF" not in nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(nodes.load_custom_node(path)):
            raise RuntimeError(f"ComfyUI could not import the custom node folder {path} (see the log above)")
    return nodes.NODE_CLASS_MAPPINGS


# What ComfyUI-GGUF's tools/convert.py keeps in F32 for arch "wan": 1-D tensors, tensors of at most 1024
# elements and the modulation tables (keys_hiprec). Tensors of more than 4 dimensions (the 5-D patch-embedding
# kernel) are added back in F32 as its tools/fix_5d_tensors.py does. Everything else is quantized (here Q8_0, as
# llama-quantize with the pack's patch would).
F32_MAX_ELEMENTS = 1024
HIPREC_KEYS = (".modulation",)


def qtype_for(name: str, shape: tuple[int, ...]):
    import gguf
    n = 1
    for d in shape:
        n *= d
    if len(shape) <= 1 or len(shape) > 4 or n <= F32_MAX_ELEMENTS or any(k in name for k in HIPREC_KEYS):
        return gguf.GGMLQuantizationType.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return gguf.GGMLQuantizationType.F16  # the converter's fallback for rows Q8_0 cannot block
    return gguf.GGMLQuantizationType.Q8_0


def write_wan_gguf_q8(safetensors_path: str, gguf_path: str) -> dict[str, str]:
    """Write the native Wan base in ``safetensors_path`` as a Q8_0 GGUF (arch ``wan``); returns {tensor: qtype name}.

    Note: a GGUF carries no safetensors ``config`` metadata, so the base must have ComfyUI's detected defaults
    (text_dim 4096, head dim 128)."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import load_file
    sd = load_file(safetensors_path)
    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    kinds = {}
    for name in sorted(sd):
        data = sd[name].to(torch.float32).numpy()
        qtype = qtype_for(name, tuple(data.shape))
        writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
        kinds[name] = qtype.name
    tmp = gguf_path + ".partial"
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, gguf_path)
    return kinds
