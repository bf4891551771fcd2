"""bench/bench_convert_fullsize.py at tiny size: its sparse synthetic releases are what the converter accepts (real
layout, shards + index), the release-size configs have the real tensor counts, and the run reports every row.
Checks what ran, never how fast."""
import json
import os
import subprocess
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(PACK_DIR, "bench"))

import bench_convert_fullsize as fullsize  # noqa: E402


def test_release_size_layouts_have_the_real_counts():
    """Wan2.1-14B VAP: 1303 base + 340 expert tensors, 16.395 B + 4.279 B params; CogVideoX-5B VAP: experts on
    41 of 42 blocks."""
    configs = fullsize.release_configs()
    family, cfg, _ = configs["wan14b"]
    shapes = fullsize.release_shapes(family, cfg)
    expert = {n: s for n, s in shapes.items() if "_mot_ref" in n}
    assert (len(shapes) - len(expert), len(expert)) == (1303, 340)
    assert round(sum(fullsize.numel(s) for s in expert.values()) / 1e9, 3) == 4.279
    assert round(sum(fullsize.numel(s) for n, s in shapes.items() if n not in expert) / 1e9, 3) == 16.395
    family, cfg, _ = configs["cog5b"]
    shapes = fullsize.release_shapes(family, cfg)
    blocks = {int(n.split(".")[1]) for n in shapes if n.startswith("transformer_blocks.") and "_mot_ref" in n}
    assert blocks == set(range(41)) and shapes["patch_embed.pos_embedding"] == (1, 226 + 13 * 30 * 45, 3072)


def test_sparse_release_converts(tmp_path):
    family, cfg, _ = fullsize.release_configs()["tiny-wan"]
    info = fullsize.write_sparse_release(str(tmp_path / "rel"), cfg, fullsize.release_shapes(family, cfg), "BF16", 2 ** 20)
    assert info["shards"] > 1 and info["allocated_bytes"] < info["bytes"] // 4  # holes, not data
    from vap_core import convert
    out = str(tmp_path / "expert.safetensors")
    ckpt = convert.convert(str(tmp_path / "rel"), expert_out=out, quiet=True)
    assert ckpt.expert_blocks == cfg["block_idx_with_mot_ref"]
    assert os.path.getsize(out) > info["expert_bytes"]


def test_tiny_run_reports_every_row(tmp_path):
    out = str(tmp_path / "r.md")
    proc = subprocess.run([sys.executable, os.path.join(PACK_DIR, "bench", "bench_convert_fullsize.py"), "--releases",
                           "tiny-wan,tiny-cog", "--no-load", "--tmp", str(tmp_path), "--out", out],
                          cwd=PACK_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.splitext(out)[0] + ".json") as f:
        result = json.load(f)
    runs = [(r["release"], r["what"]) for r in result["convert"]]
    for release in ("tiny-wan", "tiny-cog"):
        assert (release, "convert") in runs and (release, "copy (floor, before)") in runs
    assert all(r["peak_rss"] > 0 and r["out_bytes"] > 0 for r in result["convert"])
    assert [d for d in os.listdir(tmp_path) if d.startswith("vap_fullsize_")] == []  # temp folders removed
