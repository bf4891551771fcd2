"""Tiny random-weight models and inputs in the exact layouts of the real files (outputs are noise): what
``run.py --demo`` and the tests run the shipped workflows with. ``standin_nodes/`` is a custom-node folder
with loaders for the two model files that have no tiny real layout (UMT5/T5 and CLIP vision)."""
