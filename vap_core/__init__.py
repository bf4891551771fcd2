"""Model, format and math code of ComfyUI-VAP.

Nothing here imports node code. The format modules (``checkpoint``, ``wan_keys``,
``safetensors_io``, ``convert``) do not import ComfyUI, so the converter runs without a host;
the model modules (``wan_expert``, ``wan_mot``) import ComfyUI's own Wan classes.
"""
