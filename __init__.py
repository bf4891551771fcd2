"""ComfyUI-VAP: Video-As-Prompt (ByteDance, ICLR 2026) on ComfyUI's native Wan / CogVideoX models.

Import is light: node classes only; model code loads when a node runs.
"""
from .nodes import comfy_entrypoint  # noqa: F401  (ComfyUI's V3 entry point)
