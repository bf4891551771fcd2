"""Model, format and math code of ComfyUI-VAP (no node code).

- ``formats/``: the official checkpoint, safetensors reading/writing, key renaming rules, the expert file.
  No ComfyUI import: ``python -m vap_core.convert`` runs without a host.
- ``expert/``: building the expert as its own ComfyUI model and attaching it to a base MODEL (both variants).
- ``wan/`` and ``cogvideox/``: per variant the key map (``keys``), the expert blocks (``expert``), the MoT
  forward (``mot``), the attachment (``apply``) and the conditioning math (``conditioning``).
- ``conds.py`` names the conditioning entries that carry a reference; ``video.py`` decodes reference clips;
  ``errors.py`` holds the errors a user sees; ``convert.py`` is the converter's command line.
"""
