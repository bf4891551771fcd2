"""bench/bench_gpu.py runs end to end on CPU at tiny size (``--tiny``: the code path the GPU run takes, tiny models),
so the GPU benchmark is known to work before a GPU is there. Checks what it ran, never how fast.

The official row needs ``VAP_OFFICIAL_SRC`` (a Video-As-Prompt checkout); without it the row is skipped by the bench
with its reason, and this test checks that reason instead.
"""
import json
import os
import subprocess
import sys

import pytest

import host

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    if host.COMFYUI_PATH is None:
        pytest.skip(f"no ComfyUI host: {host.HOW_FOUND}")
    out = str(tmp_path_factory.mktemp("gpu_bench"))
    env = dict(os.environ, COMFYUI_PATH=host.COMFYUI_PATH, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(PACK_DIR, "bench", "bench_gpu.py"), "--tiny", "--repeats", "1",
                           "--out", out], cwd=PACK_DIR, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(out, "gpu_bench.json")) as f:
        result = json.load(f)
    with open(os.path.join(out, "gpu_bench.md")) as f:
        return result, f.read()


def test_every_row_ran_through_the_chosen_attention(bench_result):
    result, _ = bench_result
    assert result["tiny"] and set(result["families"]) == {"wan", "cog"}
    for family, f in result["families"].items():
        rows = set(f["timing"])
        want = {"base [pytorch]", "pack [pytorch]", "pack-fp8 [pytorch]"} | ({"pack-split [pytorch]"} if family == "wan" else set())
        assert want <= rows, (family, rows)
        base_calls = f["timing"]["base [pytorch]"]["attention_calls"]
        for row, s in f["timing"].items():
            assert len(s["times"]) == 1 and s["median"] > 0
            if not row.startswith("official"):
                # the override saw every attention call: batched rows as many as the base, split rows twice that
                assert s["attention_calls"] == base_calls * (2 if row.startswith("pack-split") else 1), (family, row)


def test_rows_compute_what_they_claim(bench_result):
    """pack-split equals the batched pack, the fp8 expert stays close to it, the expert changes the base's output;
    where the official code ran, the pack equals it (same weights: the official model shares ComfyUI's)."""
    result, _ = bench_result
    for family, f in result["families"].items():
        a = f["agreement"]
        assert a["pack [pytorch] - base [pytorch]"] > 1e-2, family
        assert a["pack-fp8 [pytorch] - pack [pytorch]"] < 0.1, family
        if family == "wan":
            assert a["pack-split [pytorch] - pack [pytorch]"] < 1e-4
        if "official [sdpa]" in f["timing"]:
            assert a["pack [pytorch] - official"] < 1e-3 * max(1.0, a["mean abs official"]), family
        else:
            assert f["official_note"], "the official row was skipped without a reason"


def test_markdown_has_the_tables(bench_result):
    result, md = bench_result
    for family in result["families"]:
        assert f"## {family}:" in md
    assert "| base [pytorch] |" in md and "| pack [pytorch] |" in md and "median s" in md
