"""TEST-ONLY ComfyUI nodes for tests/test_server_pipeline_golden.py (tests/ is not in the pack's zip).

A real server cannot take a golden case's stub embeddings, nor load its tiny CogVideoX base the way ComfyUI
loads the real one; these nodes fill exactly those gaps and nothing else:

* ``VAPTestLoadConditioning`` / ``VAPTestLoadCLIPVisionOutput``: a case's text / CLIP-vision states from a
  .safetensors file in input/, handed on as *CLIP Text Encode* / *CLIP Vision Encode* hand theirs on.
* ``VAPTestTinyCogUNETLoader``: *Load Diffusion Model* (same inputs) for a tiny CogVideoX base. ComfyUI 0.25
  builds every CogVideoX with the 5B's 60x90x49 positional table, so a tiny base's learned table cannot go
  through core's loader: the other tensors do, then the table is put where ComfyUI keeps the 5B's (as
  tests/cog_fixtures.load_base does in-process). ComfyUI picks the 5B's latent format (scaling 0.7) only for
  >= 48 heads; the tiny bases have 2, so the node gives them that format, as ComfyUI gives the real base.
"""
import os

import folder_paths
import torch


def _input_safetensors() -> list[str]:
    folder = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []


def _load_states(file: str, key: str) -> torch.Tensor:
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(folder_paths.get_input_directory(), file))
    if key not in tensors:
        raise KeyError(f"{file} holds no tensor {key!r} (it holds {sorted(tensors)})")
    return tensors[key]


class VAPTestLoadConditioning:
    """Stand-in for CLIPTextEncode: the states of a file, as CONDITIONING."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (_input_safetensors(),), "key": ("STRING", {"default": "states"})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "load"
    CATEGORY = "VAP/testing"
    DESCRIPTION = "TEST ONLY: text conditioning [1, tokens, dim] read from a .safetensors file in input/."

    def load(self, file, key="states"):
        return ([[_load_states(file, key), {"pooled_output": None}]],)


class VAPTestLoadCLIPVisionOutput:
    """Stand-in for CLIPVisionEncode: penultimate hidden states of a file, as CLIP_VISION_OUTPUT."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (_input_safetensors(),), "key": ("STRING", {"default": "states"})}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "load"
    CATEGORY = "VAP/testing"
    DESCRIPTION = "TEST ONLY: CLIP vision penultimate hidden states read from a .safetensors file in input/."

    def load(self, file, key="states"):
        import comfy.clip_vision
        out = comfy.clip_vision.Output()
        out.penultimate_hidden_states = _load_states(file, key)
        return (out,)


def _core_holds_table(table: torch.Tensor) -> bool:
    """Whether ComfyUI's own CogVideoX class (built at its constructor's default sample size, no config read)
    can hold this learned table (see tests/cog_fixtures.comfyui_holds_learned_table)."""
    import inspect
    from comfy.ldm.cogvideo.model import CogVideoXTransformer3DModel
    d = {k: v.default for k, v in inspect.signature(CogVideoXTransformer3DModel.__init__).parameters.items()}
    frames = (d["sample_frames"] - 1) // d["temporal_compression_ratio"] + 1
    rows = d["max_text_seq_length"] + frames * (d["sample_height"] // d["patch_size"]) * (d["sample_width"] // d["patch_size"])
    return table.shape[1] == rows and table.shape[2] % 3 == 0


class VAPTestTinyCogUNETLoader:
    """Stand-in for UNETLoader on a tiny CogVideoX base (learned table of another size, < 48 heads)."""

    @classmethod
    def INPUT_TYPES(cls):
        import nodes
        return nodes.UNETLoader.INPUT_TYPES()

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "VAP/testing"
    DESCRIPTION = ("TEST ONLY: core 'Load Diffusion Model' for tiny CogVideoX bases: places a learned positional "
                   "table ComfyUI cannot size, and gives the 5B's latent format (CogVideoX1_5).")

    def load_unet(self, unet_name, weight_dtype="default"):
        import comfy.latent_formats
        import comfy.sd
        import comfy.utils
        import nodes
        if weight_dtype != "default":
            raise ValueError("VAPTestTinyCogUNETLoader loads weight_dtype 'default' only")
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
        table = sd.pop("patch_embed.pos_embedding", None)
        if table is None or _core_holds_table(table):
            model = nodes.UNETLoader().load_unet(unet_name, weight_dtype)[0]
        else:
            model = comfy.sd.load_diffusion_model_state_dict(sd, metadata=metadata)
            patch_embed = model.model.diffusion_model.patch_embed
            patch_embed.register_buffer("pos_embedding", table.clone(), persistent=True)
            patch_embed.use_learned_positional_embeddings = True
        model.model.latent_format = comfy.latent_formats.CogVideoX1_5()
        return (model,)


NODE_CLASS_MAPPINGS = {
    "VAPTestLoadConditioning": VAPTestLoadConditioning,
    "VAPTestLoadCLIPVisionOutput": VAPTestLoadCLIPVisionOutput,
    "VAPTestTinyCogUNETLoader": VAPTestTinyCogUNETLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VAPTestLoadConditioning": "TEST: conditioning from file (stand-in for CLIP Text Encode)",
    "VAPTestLoadCLIPVisionOutput": "TEST: CLIP vision output from file (stand-in for CLIP Vision Encode)",
    "VAPTestTinyCogUNETLoader": "TEST: tiny CogVideoX base (stand-in for Load Diffusion Model)",
}
