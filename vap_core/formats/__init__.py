"""Official checkpoint and expert file formats; imports no ComfyUI."""
