"""Batch mode of the runner (``run.py --csv``): rows of a VAP-Data benchmark CSV, resumable, one bad row
reported without stopping the run; host-free parts here, the real-server runs at the end."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

import host
from vap_headless import batch
from vap_headless import client as ch
from vap_headless.demo import assets

PACK = host.PACK_DIR
COLUMNS = ["video_paths", "ref_video_path", "tar_video_caption", "ref_video_caption"]


def _clip(folder, name, frames=12, size=(96, 64)):
    """A tiny H.264 clip (a square moving right) at ``folder/name``."""
    out = assets.write_inputs(str(folder / f"_{name}"), frames=frames, size=size)
    os.replace(folder / f"_{name}" / out["video"], folder / name)
    return name


def _write_csv(path, rows, extra_columns=()):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + list(extra_columns))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _frames(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])


# ------------------------------------------------------------------------------------------ host-free

def test_rows_resolve_paths_and_name_each_problem(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _clip(data, "t.mp4")
    _clip(data, "r.mp4")
    path = _write_csv(tmp_path / "bench.csv", [
        {"video_paths": "t.mp4", "ref_video_path": "r.mp4", "tar_video_caption": "a", "ref_video_caption": "b"},
        {"video_paths": "t.mp4", "ref_video_path": "gone.mp4", "tar_video_caption": "a", "ref_video_caption": "b"},
        {"video_paths": "t.mp4", "ref_video_path": "r.mp4", "tar_video_caption": " ", "ref_video_caption": "b"},
        {"video_paths": "t.mp4", "ref_video_path": "r.mp4", "tar_video_caption": "a", "ref_video_caption": "b",
         "ref_video_path_2": "r.mp4", "ref_video_caption_2": "c"},
    ], extra_columns=["ref_video_path_2", "ref_video_caption_2"])
    rows = batch.read_rows(path, data_dir=str(data))
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].problem is None and rows[0].target_video == str(data / "t.mp4")
    assert rows[0].references == [(str(data / "r.mp4"), "b")]
    assert "video not found" in rows[1].problem and "gone.mp4" in rows[1].problem
    assert "tar_video_caption is empty" in rows[2].problem
    assert rows[3].problem is None and rows[3].references[1] == (str(data / "r.mp4"), "c")
    # paths are relative to the CSV's folder by default
    assert batch.read_rows(path)[0].problem.startswith("video not found")


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("video_paths,caption\nx.mp4,y\n")
    with pytest.raises(ch.HeadlessError, match="ref_video_path, tar_video_caption, ref_video_caption"):
        batch.read_rows(str(path))


@pytest.mark.parametrize("saved", [False, True], ids=["shipped", "saved_one_node"])
def test_row_prompt_wires_extra_references_into_the_cog_node(saved):
    """The shipped graph (Encode Reference + Conditioning from Reference: a loader and an encode node per reference)
    and a graph saved with the one-node conditioning (a loader per reference)."""
    import saved_workflows
    prompt = saved_workflows.saved("cog_vap_official") if saved else ch.load_api_workflow("cog_vap_official")
    pristine = json.loads(json.dumps(prompt))
    row = batch.Row(7, "t.mp4", "target caption", [("r1.mp4", "cap 1"), ("r2.mp4", "cap 2"), ("r3.mp4", "cap 3")])
    out = batch.row_prompt(prompt, row, "start.png", ["u1.mp4", "u2.mp4", "u3.mp4"], "vap_batch/row_0007")
    (cid,) = ch.nodes_of(out, "VAPCogConditioning" if saved else "VAPCogConditioningFromReference")
    cond = out[cid]["inputs"]

    def loader_of(k):
        if saved:
            return cond["reference_frames" + (f"_{k}" if k > 1 else "")][0]
        encode = out[cond["reference" + (f"_{k}" if k > 1 else "")][0]]
        assert encode["class_type"] == "VAPCogEncodeReference"
        return encode["inputs"]["reference_frames"][0]
    for k, video, caption in ((2, "u2.mp4", "cap 2"), (3, "u3.mp4", "cap 3")):
        loader, text = out[loader_of(k)], out[cond[f"ref_positive_{k}"][0]]
        assert loader["class_type"] == "VAPLoadReferenceVideo" and loader["inputs"]["file"] == video
        assert text["class_type"] == "CLIPTextEncode" and text["inputs"]["text"] == caption
        # the copies keep the first reference's settings (frames, size, clip)
        first = out[loader_of(1)]["inputs"]
        assert {k2: v for k2, v in loader["inputs"].items() if k2 != "file"} == \
               {k2: v for k2, v in first.items() if k2 != "file"}
    assert len({loader_of(k) for k in (1, 2, 3)}) == 3
    assert out[loader_of(1)]["inputs"]["file"] == "u1.mp4"
    assert out[ch.node_by_title(out, "Prompt")]["inputs"]["text"] == "target caption"
    assert out[ch.node_by_title(out, "Reference caption")]["inputs"]["text"] == "cap 1"
    assert out[ch.nodes_of(out, "SaveVideo")[0]]["inputs"]["filename_prefix"] == "vap_batch/row_0007"
    assert prompt == pristine  # the shared workflow is not modified


def test_wan_rows_take_one_reference():
    row = batch.Row(0, "t.mp4", "p", [("r1.mp4", "a"), ("r2.mp4", "b")])
    with pytest.raises(batch.RowError, match="only CogVideoX workflows"):
        batch.row_prompt(ch.load_api_workflow("wan_vap_official"), row, "s.png", ["u1", "u2"], "x")


def test_side_by_side_is_reference_target_generated(tmp_path):
    ref = _clip(tmp_path, "ref.mp4", frames=20, size=(96, 64))
    tar = _clip(tmp_path, "tar.mp4", frames=12, size=(80, 48))
    gen = _clip(tmp_path, "gen.mp4", frames=9, size=(64, 48))
    out = batch.side_by_side(str(tmp_path / ref), str(tmp_path / tar), str(tmp_path / gen), str(tmp_path / "sbs.mp4"))
    frames, generated = _frames(out), _frames(tmp_path / gen)
    assert frames.shape == (9, 48, 192, 3)
    assert np.abs(frames[:, :, 128:].astype(int) - generated.astype(int)).mean() < 6   # right: the generated video
    assert np.abs(frames[:, :, :64].astype(int) - frames[:, :, 64:128].astype(int)).mean() > 1  # ref != target
    assert not os.path.exists(tmp_path / "sbs.partial.mp4")


def test_unreadable_video_is_a_row_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(batch.RowError, match="cannot read the video"):
        batch.check_video(str(bad))
    assert not batch.is_complete(str(bad))


def test_batch_refuses_single_video_arguments(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(PACK, "workflows", "run.py"), "--csv", "x.csv",
                           "--prompt", "p"], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 2 and "--prompt cannot be combined with --csv" in proc.stderr


# ------------------------------------------------------------------------------------------ real server

def _demo_batch(csv_path, out_dir, cwd, extra=(), popen=False):
    cmd = [sys.executable, os.path.join(PACK, "workflows", "run.py"), "--demo", "--comfyui", host.COMFYUI_PATH,
           "--csv", csv_path, "--output-dir", str(out_dir), "--steps", "2", *extra]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(cwd),
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=str(cwd))


def _summary(out_dir):
    with open(out_dir / "summary.json") as f:
        return {r["row"]: r for r in json.load(f)}


@pytest.mark.server
def test_demo_batch_resumes_reports_bad_rows_and_survives_a_kill(tmp_path):
    if host.COMFYUI_PATH is None:
        pytest.skip(f"ComfyUI host not found: {host.HOW_FOUND}")
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    targets = [_clip(data, f"target_{i}.mp4", frames=10 + i) for i in range(3)]
    ref = _clip(data, "reference.mp4", frames=14)
    rows = [{"video_paths": t, "ref_video_path": ref, "tar_video_caption": f"subject {i}",
             "ref_video_caption": "a square moves right"} for i, t in enumerate(targets)]
    rows.insert(2, {"video_paths": targets[0], "ref_video_path": "missing.mp4", "tar_video_caption": "x",
                    "ref_video_caption": "y"})
    csv_path = _write_csv(data / "benchmark.csv", rows)

    # first run: 3 videos (+ side-by-side), 1 reported error, exit code non-zero, summary written
    proc = _demo_batch(csv_path, out, tmp_path, extra=["--side-by-side"])
    assert proc.returncode == 1, proc.stderr[-4000:]
    summary = _summary(out)
    assert {r: s["status"] for r, s in summary.items()} == {0: "done", 1: "done", 2: "failed", 3: "done"}
    assert "missing.mp4" in summary[2]["error"] and "row 2 failed" in proc.stderr
    assert "[batch]" in proc.stderr and "4/4 rows (1 failed)" in proc.stderr       # the overall progress line
    assert "2/2 KSampler" in proc.stderr                                          # the per-step bar
    for r in (0, 1, 3):
        video = _frames(out / f"row_{r:04d}.mp4")
        assert video.shape == (9, 48, 64, 3)
        assert _frames(out / f"row_{r:04d}_side_by_side.mp4").shape == (9, 48, 192, 3)
    with open(out / "summary.csv") as f:
        assert next(csv.reader(f)) == list(batch.SUMMARY_FIELDS)
    first = {r: os.path.getmtime(out / f"row_{r:04d}.mp4") for r in (0, 1, 3)}

    # rerun: nothing to do for the 3 done rows, the failed one is tried again
    proc = _demo_batch(csv_path, out, tmp_path, extra=["--side-by-side"])
    assert proc.returncode == 1, proc.stderr[-4000:]
    summary = _summary(out)
    assert {r: s["status"] for r, s in summary.items()} == {0: "skipped", 1: "skipped", 2: "failed", 3: "skipped"}
    assert {r: os.path.getmtime(out / f"row_{r:04d}.mp4") for r in (0, 1, 3)} == first
    assert "KSampler" not in proc.stderr

    # a run stopped mid-row (SIGTERM, as Ctrl-C or a scheduler) leaves nothing under the row's final name; the
    # next run completes it
    os.remove(out / "row_0003.mp4")
    runner = _demo_batch(csv_path, out, tmp_path, popen=True)
    try:
        seen = ""
        deadline = time.monotonic() + 600
        while "KSampler" not in seen and time.monotonic() < deadline and runner.poll() is None:
            seen += runner.stderr.readline()
        assert "KSampler" in seen, seen[-3000:]   # row 3 is sampling now
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(120) == 130
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
        runner.wait(30)
        runner.stderr.close()
        runner.stdout.close()
    assert not os.path.exists(out / "row_0003.mp4")
    proc = _demo_batch(csv_path, out, tmp_path)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert _summary(out)[3]["status"] == "done" and _frames(out / "row_0003.mp4").shape == (9, 48, 64, 3)
    assert not [n for n in os.listdir(out) if ".partial" in n]
