"""Headless runner of the shipped VAP workflows: ``python workflows/run.py`` (or ``python -m vap_headless``).

- ``client``: start a private ComfyUI server, speak its HTTP + websocket API (standard library + aiohttp).
- ``cli``: the runner's command line (one video, ``--demo``).
- ``demo/``: tiny random models and inputs in the real layouts for ``--demo`` and the tests.
- ``build_workflows``: writes the shipped workflows (API format, and UI format through the real frontend).

Nothing here is imported by the nodes; ComfyUI never loads this package.
"""
