"""Renaming official (diffusers fork) tensor names to ComfyUI-native ones with anchored regex rules.

Expert tensors map like the base tensor they mirror once ``_mot_ref`` is removed, so an expert file is a
partial native state dict of the base architecture (docs/DESIGN.md, "Expert file format")."""
from __future__ import annotations

import re
from typing import Callable


class KeyRules:
    def __init__(self, family: str, model_name: str, rules: list[tuple[str, str]], is_expert: Callable[[str], bool],
                 ignored: str | None = None):
        self.family, self.model_name = family, model_name
        self.rules = [(re.compile("^" + p + "$"), t) for p, t in rules]
        self.is_expert = is_expert
        self.ignored = re.compile("^" + ignored + "$") if ignored else None

    def native_name(self, official_key: str) -> str:
        key = official_key.replace("_mot_ref", "")
        for pattern, template in self.rules:
            if pattern.match(key):
                return pattern.sub(template, key)
        raise KeyError(
            f"unknown {self.family} tensor '{official_key}': not part of the official {self.model_name} layout this converter "
            "knows. Report it with the model's name.")

    def split_and_map(self, keys) -> tuple[dict[str, str], dict[str, str]]:
        """({native base name: official key}, {native expert name: official key})."""
        base: dict[str, str] = {}
        expert: dict[str, str] = {}
        for k in keys:
            if self.ignored is not None and self.ignored.match(k.replace("_mot_ref", "")):
                continue
            (expert if self.is_expert(k) else base)[self.native_name(k)] = k
        return base, expert
