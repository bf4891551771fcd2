"""How the expert's bytes sit in RAM: the loader keeps the file memory-mapped (held once, never copied), a cast
(``weight_dtype``) leaves nothing pointing into the file, and the converter reads without a map.

Where a tensor's memory lives is read from /proc/self/maps (Linux): a tensor whose data lies inside the file's
mapping is the file's page cache, not a copy. Sizes and timings at release scale: bench/bench_convert_fullsize.py.
"""
import gc
import os
import sys

import pytest
import torch

import wan_fixtures
from vap_core import convert as convert_mod
from vap_core.formats.safetensors_io import LazyTensors
from vap_headless.demo.tiny_cog import official_cog_mot_state_dict
from vap_headless.demo.tiny_wan import official_wan_mot_state_dict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps (Linux only)")
WAN_CONFIG = {"num_layers": 3, "block_idx_with_mot_ref": [0, 2], "text_dim": 32, "ffn_dim": 64}


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    real = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _in_file(t: torch.Tensor, ranges) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(lo <= ptr < hi for lo, hi in ranges)


def _tensors(expert):
    return list(expert.module.state_dict().values())


@pytest.fixture(scope="module", params=["wan", "cog"])
def expert_file(request, tmp_path_factory):
    root = str(tmp_path_factory.mktemp(f"mem_{request.param}"))
    if request.param == "wan":
        sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=5)
    else:
        sd, cfg = official_cog_mot_state_dict(None, seed=5)
    src = wan_fixtures.write_official_folder(os.path.join(root, "official"), sd, cfg)
    path = os.path.join(root, "expert.safetensors")
    convert_mod.convert(src, expert_out=path, dtype="bf16", quiet=True)
    return path


def test_loader_keeps_the_file_mapped_not_copied(pack, expert_file):
    """Default weight_dtype: every weight is the file's mapped pages (ComfyUI's load_torch_file), none copied."""
    expert = pack.vap_core.expert.loading.load_expert(expert_file)
    ranges = _mapped_ranges(expert_file)
    assert ranges, "the expert file is not memory-mapped after loading"
    outside = [t.shape for t in _tensors(expert) if t.numel() and not _in_file(t, ranges)]
    assert not outside, f"weights copied out of the file: {outside[:4]}"


def test_cast_leaves_nothing_in_the_file(pack, expert_file):
    """fp8 weight_dtype: the cast copies are the only copies; no tensor keeps the file's mapping alive."""
    expert = pack.vap_core.expert.loading.load_expert(expert_file, "fp8_e4m3fn")
    gc.collect()
    ranges = _mapped_ranges(expert_file)
    inside = [t.shape for t in _tensors(expert) if t.numel() and _in_file(t, ranges)]
    assert not inside, f"tensors still pointing into the file (keeping all its read pages in RSS): {inside[:4]}"
    assert {t.dtype for t in _tensors(expert) if t.ndim == 2} == {torch.float8_e4m3fn}


def test_converter_reads_without_a_map(tmp_path, monkeypatch):
    """The converter's reads are plain reads into their own buffers (a map would keep every page read in RSS):
    it converts with safetensors' memory-mapped reader unavailable, and writes the same tensors."""
    sd, cfg = official_wan_mot_state_dict(WAN_CONFIG, seed=6)
    src = wan_fixtures.write_official_folder(str(tmp_path / "official"), sd, cfg, shards=2)
    import vap_core.formats.safetensors_io as io_mod

    def no_map(*args, **kwargs):
        raise AssertionError("the converter opened a memory map")
    monkeypatch.setattr(io_mod, "safe_open", no_map)
    out = str(tmp_path / "expert.safetensors")
    convert_mod.convert(src, expert_out=out, quiet=True)
    monkeypatch.undo()
    written, mapped = LazyTensors([out], mmap=False), LazyTensors([out])
    assert written.keys() and all(torch.equal(written.get(k), mapped.get(k)) for k in written.keys())
    from vap_core.wan import keys as wan_keys
    _, expert_map = wan_keys.split_and_map(sd)
    assert all(torch.equal(written.get(n), sd[o]) for n, o in expert_map.items())
