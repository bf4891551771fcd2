"""The VAP expert as its own ComfyUI model: building it from a state dict, attaching it to a base MODEL."""
