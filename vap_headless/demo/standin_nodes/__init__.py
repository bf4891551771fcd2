"""Test-only ComfyUI node pack: loaders for the tiny UMT5, T5 and CLIP-vision stand-ins (see standins.py).

Loaded by the test server (and ``workflows/run.py --demo``) from a ``custom_nodes`` folder next to the
pack; never part of the shipped pack. Each loader takes the same inputs as the core loader it replaces
(``CLIPLoader``, ``CLIPVisionLoader``), so a shipped workflow switches to it by changing only
``class_type``.
"""
import folder_paths

from . import standins


class VAPTestTinyUMT5Loader:
    """Stand-in for core CLIPLoader(type='wan'): returns a real comfy.sd.CLIP (tiny UMT5)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),),
                             "type": (["wan"],)},
                "optional": {"device": (["default", "cpu"],)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "VAP/testing"
    DESCRIPTION = "TEST ONLY: tiny random UMT5 with the Wan tokenizer (output is meaningless)."

    def load_clip(self, clip_name, type="wan", device="default"):
        return (standins.load_tiny_umt5(folder_paths.get_full_path_or_raise("text_encoders", clip_name), device),)


class VAPTestTinyT5Loader:
    """Stand-in for core CLIPLoader(type='cogvideox'): returns a real comfy.sd.CLIP (tiny T5, CogVideoX tokenizer)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),),
                             "type": (["cogvideox"],)},
                "optional": {"device": (["default", "cpu"],)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "VAP/testing"
    DESCRIPTION = "TEST ONLY: tiny random T5 with the CogVideoX tokenizer (226 tokens; output is meaningless)."

    def load_clip(self, clip_name, type="cogvideox", device="default"):
        return (standins.load_tiny_t5(folder_paths.get_full_path_or_raise("text_encoders", clip_name), device),)


class VAPTestTinyCLIPVisionLoader:
    """Stand-in for core CLIPVisionLoader: returns a real comfy.clip_vision.ClipVisionModel (tiny, width 1280)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("clip_vision"),)}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "VAP/testing"
    DESCRIPTION = "TEST ONLY: tiny random CLIP vision model with ViT-H/14 output shapes (output is meaningless)."

    def load_clip(self, clip_name):
        return (standins.load_tiny_clip_vision(folder_paths.get_full_path_or_raise("clip_vision", clip_name)),)


NODE_CLASS_MAPPINGS = {
    "VAPTestTinyUMT5Loader": VAPTestTinyUMT5Loader,
    "VAPTestTinyT5Loader": VAPTestTinyT5Loader,
    "VAPTestTinyCLIPVisionLoader": VAPTestTinyCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VAPTestTinyUMT5Loader": "TEST: tiny UMT5 (stand-in for Load CLIP)",
    "VAPTestTinyT5Loader": "TEST: tiny T5 for CogVideoX (stand-in for Load CLIP)",
    "VAPTestTinyCLIPVisionLoader": "TEST: tiny CLIP Vision (stand-in for Load CLIP Vision)",
}

