"""A batch over several real ComfyUI servers (loopback): rows go to whichever server is free, a server killed
mid-row has its row redone elsewhere, a bad row is reported once; outputs equal a single-server run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import host
from test_batch import _clip, _frames, _write_csv

PACK = host.PACK_DIR
pytestmark = [pytest.mark.server, pytest.mark.host]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers sharing one base directory of tiny models (each with its own database)."""
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    host.import_host()
    from vap_headless import client as ch
    from vap_headless.demo import assets
    base = tmp_path_factory.mktemp("servers_base")
    assets.make_base_directory(str(base), cog=False)
    started = [ch.ComfyServer(host.COMFYUI_PATH, custom_node_dirs=[(PACK, "ComfyUI-VAP"), assets.STANDIN_NODES_DIR],
                              base_directory=str(base), cpu=True, database_path=str(base / f"db{i}.sqlite"),
                              env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # two servers, two cores
               for i in range(2)]
    try:
        for s in started:
            s.launch()
        for s in started:
            s.wait_ready()
        yield started
    finally:
        for s in started:
            s.cleanup()


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    data = tmp_path_factory.mktemp("rows")
    ref = _clip(data, "reference.mp4", frames=14)
    records = [{"video_paths": _clip(data, f"target_{i}.mp4", frames=9 + i), "ref_video_path": ref,
                "tar_video_caption": f"subject {i} under a lamp", "ref_video_caption": "a square moves right"}
               for i in range(6)]
    return data, records


def _cmd(csv_path, out, addresses, steps=2):
    cmd = [sys.executable, os.path.join(PACK, "workflows", "run.py"), "--demo", "--csv", csv_path,
           "--output-dir", str(out), "--steps", str(steps)]
    for a in addresses:
        cmd += ["--server", a]
    return cmd


def _summary(out):
    with open(out / "summary.json") as f:
        return {r["row"]: r for r in json.load(f)}


def test_rows_spread_over_two_servers_equal_one_server(servers, rows, tmp_path):
    """Compared on the sampled latents (a SaveLatent added to the shipped graph): those are bit-identical run to
    run, while the H.264 mp4 of the same latent is not always byte-identical on a loaded machine."""
    data, records = rows
    csv_path = _write_csv(data / "six.csv", records)
    workflow = tmp_path / "with_latent.api.json"
    from vap_headless import client as ch
    graph = ch.load_api_workflow("wan_vap_official")
    sampler = ch.nodes_of(graph, "KSampler")[0]
    graph["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": "x"}}
    workflow.write_text(json.dumps(graph))
    a, b = (s.address for s in servers)
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run(_cmd(csv_path, two, [a, b]) + ["--workflow", str(workflow)], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _summary(two)
    assert sorted(summary) == list(range(6)) and {s["status"] for s in summary.values()} == {"done"}
    assert {s["server"] for s in summary.values()} == {a, b}          # both servers ran rows
    assert "6/6 rows (0 failed)" in proc.stderr
    on_b = [r for r, s in summary.items() if s["server"] == b]
    # the same rows on server A alone: A's own rows come from its cache, B's rows are sampled again on A
    proc = subprocess.run(_cmd(csv_path, one, [a]) + ["--workflow", str(workflow)], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {s["server"] for s in _summary(one).values()} == {a}
    from safetensors.torch import load_file
    latents = os.path.join(servers[0].args[servers[0].args.index("--base-directory") + 1], "output", "vap_batch")
    for r in on_b:
        files = sorted(f for f in os.listdir(latents) if f.startswith(f"row_{r:04d}_") and f.endswith(".latent"))
        assert len(files) == 2, files                                # sampled on B, then on A
        first, second = (load_file(os.path.join(latents, f))["latent_tensor"] for f in files)
        assert first.abs().sum() > 0 and (first == second).all(), r
    for r in range(6):
        assert _frames(one / f"row_{r:04d}.mp4").shape == _frames(two / f"row_{r:04d}.mp4").shape == (9, 48, 64, 3)


def test_bad_row_is_reported_once_not_retried_on_each_server(servers, rows, tmp_path):
    data, records = rows
    bad = dict(records[0], ref_video_path="missing.mp4")
    csv_path = _write_csv(data / "bad.csv", [records[0], bad])
    proc = subprocess.run(_cmd(csv_path, tmp_path / "out", [s.address for s in servers]), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 1, proc.stderr[-4000:]
    summary = _summary(tmp_path / "out")
    assert summary[0]["status"] == "done" and summary[1]["status"] == "failed"
    assert "missing.mp4" in summary[1]["error"]
    assert proc.stderr.count("row 1 -> ") == 1 and "goes back in the queue" not in proc.stderr


def test_a_server_killed_mid_row_has_its_row_redone_on_the_other(servers, rows, tmp_path):
    data, records = rows
    csv_path = _write_csv(data / "kill.csv", records)
    victim, survivor = servers[1], servers[0]
    out = tmp_path / "out"
    runner = subprocess.Popen(_cmd(csv_path, out, [survivor.address, victim.address], steps=30),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, killed_row = [], None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = runner.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[batch] row ") and line.rstrip().endswith(f"-> {victim.address}"):
                killed_row = int(line.split()[2])
            if killed_row is not None and line.startswith(f"[{victim.address}]") and "KSampler" in line:
                os.killpg(victim.process.pid, signal.SIGKILL)   # the server dies while sampling that row
                break
        assert killed_row is not None, "".join(lines)[-3000:]
        rest = []
        reader = threading.Thread(target=lambda: rest.append(runner.stderr.read()), daemon=True)
        reader.start()
        assert runner.wait(900) == 0, ("".join(lines) + "".join(rest))[-4000:]
        reader.join(30)
    finally:
        if runner.poll() is None:
            runner.kill()
    log = "".join(lines) + "".join(rest)
    summary = _summary(out)
    assert sorted(summary) == list(range(6)) and {s["status"] for s in summary.values()} == {"done"}, summary
    assert summary[killed_row]["server"] == survivor.address          # redone on the other server
    assert f"row {killed_row}: server {victim.address} failed" in log and f"server {victim.address} dropped" in log
    for r in range(6):
        assert _frames(out / f"row_{r:04d}.mp4").shape == (9, 48, 64, 3)
    assert not [n for n in os.listdir(out) if ".partial" in n]
