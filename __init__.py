"""ComfyUI-VAP: Video-As-Prompt (ByteDance, ICLR 2026) on ComfyUI's native Wan / CogVideoX models.

Importing the pack does nothing heavy: ComfyUI calls ``comfy_entrypoint`` (V3), which imports the
node modules; model code loads only when a node runs.
"""


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint
    return await entrypoint()
