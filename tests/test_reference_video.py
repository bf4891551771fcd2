"""Reference-video input: frame selection, resize, fps, errors, memory, and the node on the real host.

Test videos are tiny H.264 MP4s written with PyAV; frame i has R = (i % 16) * 16 + 8 and G = (i // 16) * 16 + 8
everywhere, so the source index of every returned frame can be read back from its pixels (lossy coding moves
values by a few levels only).
"""
import asyncio
import importlib
import io
import os
import random

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vap_core import video as vv
from vap_core.errors import VAPInputError

W0, H0, FPS = 64, 48, 24


def _frame_rgb(i, w=W0, h=H0):
    a = np.empty((h, w, 3), np.uint8)
    a[..., 0] = (i % 16) * 16 + 8
    a[..., 1] = (i // 16) * 16 + 8
    a[..., 2] = (np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8)[None, :]  # spatial structure for resize
    a[: h // 4, : w // 8, 2] = 0  # a dark corner block (breaks symmetry)
    return a


def make_video(path, n, w=W0, h=H0, fps=FPS, codec="libx264", preset="medium", container_options=None):
    """preset medium uses B-frames (decode order != display order); ultrafast does not."""
    container = av.open(str(path), "w", options=container_options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "0", "preset": preset}
    container.start_encoding()
    for i in range(n):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame_rgb(i, w, h), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return str(path)


def read_index(frame):
    """Source index encoded in a frame ([H, W, 3] float 0..1 or uint8)."""
    a = np.asarray(frame, dtype=np.float64)
    if a.max() <= 1.0:
        a = a * 255.0
    r, g = a[..., 0].mean(), a[..., 1].mean()
    return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))


def indices_of(frames):
    return [read_index(f) for f in frames]


def decode_all_rgb(path):
    """Independent plain decode of every frame (rgb24) for reference comparisons."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def to_uint8(frames):
    return (frames * 255.0).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("refvideos")
    return {
        "v20": make_video(d / "v20.mp4", 20),
        "v200": make_video(d / "v200.mp4", 200, w=32, h=32, fps=25, preset="ultrafast"),
        "dir": d,
    }


# ------------------------------------------------------------------------------------------------ selection


@pytest.mark.parametrize("total,k", [(20, 9), (20, 5), (20, 1), (200, 49), (7, 9), (1, 5), (49, 49)])
def test_evenly_is_official_linspace(total, k):
    assert vv.select_indices(total, k, "evenly") == torch.linspace(0, total - 1, k).long().tolist()


def test_first_and_random_formulas():
    assert vv.select_indices(20, 5, "first") == [0, 1, 2, 3, 4]
    for seed in (0, 1, 7, 12345):
        random.seed(seed)  # the official pipeline draws with the global random module after seeding
        start = random.randint(0, 20 - 5)
        assert vv.select_indices(20, 5, "random", seed) == list(range(start, start + 5))
    assert vv.select_indices(20, 5, "random", 3) == vv.select_indices(20, 5, "random", 3)
    starts = {vv.select_indices(200, 5, "random", s)[0] for s in range(10)}
    assert len(starts) > 1  # the seed matters
    assert vv.select_indices(5, 5, "random", 9) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("mode,k,seed", [("evenly", 9, 0), ("evenly", 5, 0), ("first", 5, 0), ("first", 13, 0),
                                         ("random", 5, 0), ("random", 9, 42)])
def test_file_selection_matches_formula(videos, mode, k, seed):
    clip = vv.load_reference_video(videos["v20"], num_frames=k, width=W0, height=H0, frame_selection=mode, seed=seed)
    expected = vv.select_indices(20, k, mode, seed)
    assert clip.indices == expected
    assert indices_of(clip.frames) == expected  # the pixels really come from those source frames
    assert clip.frames.shape == (k, H0, W0, 3) and clip.frames.dtype == torch.float32
    assert 0.0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1.0
    assert clip.source_frames == 20
    assert torch.equal(clip.first_frame, clip.frames[:1])


def test_evenly_repeats_frames_of_a_short_clip(videos):
    clip = vv.load_reference_video(videos["v20"], num_frames=25, width=W0, height=H0)
    expected = torch.linspace(0, 19, 25).long().tolist()
    assert indices_of(clip.frames) == expected and len(set(expected)) == 20
    assert clip.stats.frames_kept == 20  # repeats are not decoded twice


# ------------------------------------------------------------------------------------------------ pixels


def test_stretch_equals_pil_lanczos(videos):
    src = decode_all_rgb(videos["v20"])
    clip = vv.load_reference_video(videos["v20"], num_frames=5, width=32, height=32)  # aspect 4:3 -> 1:1
    for out, i in zip(to_uint8(clip.frames), clip.indices):
        ref = np.asarray(Image.fromarray(src[i]).resize((32, 32), Image.LANCZOS))
        assert np.array_equal(out, ref)


def test_native_size_is_not_resampled(videos):
    src = decode_all_rgb(videos["v20"])
    clip = vv.load_reference_video(videos["v20"], num_frames=5, width=W0, height=H0)
    for out, i in zip(to_uint8(clip.frames), clip.indices):
        assert np.array_equal(out, src[i])


def test_center_crop(videos):
    src = decode_all_rgb(videos["v20"])
    clip = vv.load_reference_video(videos["v20"], num_frames=5, width=32, height=32, resize_mode="center_crop")
    # scale to cover: s = max(32/64, 32/48) = 2/3 -> 42.67 x 32; keep the centre 32 x 32 = source box x 8..56
    scale = max(32 / W0, 32 / H0)
    cw, ch = 32 / scale, 32 / scale
    box = ((W0 - cw) / 2, (H0 - ch) / 2, (W0 + cw) / 2, (H0 + ch) / 2)
    assert box == (8.0, 0.0, 56.0, 48.0)
    for out, i in zip(to_uint8(clip.frames), clip.indices):
        ref = np.asarray(Image.fromarray(src[i]).resize((32, 32), Image.LANCZOS, box=box))
        assert np.array_equal(out, ref)
        # the dark corner block (x < 8) is cropped away: the left column is the blue ramp near x=8, not 0
        assert out[-1, 0, 2] > 20
    stretched = vv.load_reference_video(videos["v20"], num_frames=5, width=32, height=32)
    assert not torch.equal(stretched.frames, clip.frames)
    # a wide target crops top/bottom instead
    wide = vv.load_reference_video(videos["v20"], num_frames=1, width=64, height=16, resize_mode="center_crop")
    ref = np.asarray(Image.fromarray(src[0]).resize((64, 16), Image.LANCZOS, box=(0.0, 16.0, 64.0, 32.0)))
    assert np.array_equal(to_uint8(wide.frames)[0], ref)


def test_fps_reported(videos):
    assert vv.load_reference_video(videos["v20"], num_frames=1, width=W0, height=H0).fps == 24.0
    assert vv.probe_video(videos["v200"]) == (200, 25.0, (32, 32))


def test_ntsc_fps(tmp_path):
    from fractions import Fraction
    path = make_video(tmp_path / "ntsc.mp4", 3, w=32, h=32, fps=Fraction(30000, 1001))
    assert vv.load_reference_video(path, num_frames=1, width=32, height=32).fps == pytest.approx(30000 / 1001)


def test_file_object_source(videos):
    with open(videos["v20"], "rb") as f:
        data = io.BytesIO(f.read())
    clip = vv.load_reference_video(data, num_frames=5, width=W0, height=H0, frame_selection="first")
    assert indices_of(clip.frames) == [0, 1, 2, 3, 4] and clip.fps == 24.0


def test_trim_window(videos):
    # frames are 1/24 s apart: [0.25 s, 0.75 s) holds frames 6..17
    clip = vv.load_reference_video(videos["v20"], num_frames=5, width=W0, height=H0, frame_selection="first",
                                   start_time=0.25, duration=0.5)
    assert clip.source_frames == 12
    assert indices_of(clip.frames) == [6, 7, 8, 9, 10]
    ev = vv.load_reference_video(videos["v20"], num_frames=5, width=W0, height=H0, start_time=0.25, duration=0.5)
    assert indices_of(ev.frames) == [6 + i for i in torch.linspace(0, 11, 5).long().tolist()]


# ------------------------------------------------------------------------------------------------ memory


def test_decoder_keeps_only_selected_frames(videos):
    clip = vv.load_reference_video(videos["v200"], num_frames=5, width=32, height=32)
    s = clip.stats
    assert s.packets_counted == 200 and s.frames_decoded == 200 and s.decode_passes == 1
    assert s.frames_kept == 5 and s.peak_kept <= 5
    assert indices_of(clip.frames) == torch.linspace(0, 199, 5).long().tolist()


def test_wrong_packet_count_reselects_on_true_count(videos, monkeypatch):
    monkeypatch.setattr(vv, "_count_packets", lambda *a, **k: 27)  # a container that lies about its length
    clip = vv.load_reference_video(videos["v20"], num_frames=5, width=W0, height=H0)
    assert clip.stats.decode_passes == 2 and clip.source_frames == 20
    assert indices_of(clip.frames) == torch.linspace(0, 19, 5).long().tolist()
    assert clip.stats.peak_kept <= 5


def test_truncated_but_readable_file(tmp_path):
    """An MP4 whose index (at the front) promises more frames than the cut data holds: the selection is made
    on the frames that really decode, still without holding more than the selected frames."""
    path = make_video(tmp_path / "fs.mp4", 40, container_options={"movflags": "faststart"})
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    clip = vv.load_reference_video(str(cut), num_frames=5, width=W0, height=H0)
    n = clip.source_frames
    assert 0 < n < 40 and n == clip.stats.frames_decoded
    assert indices_of(clip.frames) == torch.linspace(0, n - 1, 5).long().tolist()
    assert clip.stats.peak_kept <= 5


# ------------------------------------------------------------------------------------------------ IMAGE batch


def _image_batch(n, w=W0, h=H0):
    return torch.from_numpy(np.stack([_frame_rgb(i, w, h) for i in range(n)])).float() / 255.0


@pytest.mark.parametrize("mode,k,seed", [("evenly", 9, 0), ("first", 5, 0), ("random", 5, 11)])
def test_image_batch_selection(mode, k, seed):
    clip = vv.prepare_reference_images(_image_batch(20), num_frames=k, width=W0, height=H0,
                                       frame_selection=mode, seed=seed, fps=12.0)
    assert clip.indices == vv.select_indices(20, k, mode, seed)
    assert indices_of(clip.frames) == clip.indices
    assert clip.fps == 12.0 and clip.frames.shape == (k, H0, W0, 3)


def test_image_batch_same_size_is_exact():
    images = torch.rand(10, H0, W0, 3)
    clip = vv.prepare_reference_images(images, num_frames=5, width=W0, height=H0, frame_selection="first")
    assert torch.equal(clip.frames, images[:5])  # no 8-bit round trip when nothing is resampled
    rgba = torch.cat([images, torch.ones(10, H0, W0, 1)], -1)
    assert torch.equal(vv.prepare_reference_images(rgba, num_frames=5, width=W0, height=H0,
                                                   frame_selection="first").frames, images[:5])


def test_image_batch_resize_matches_file_path():
    images = _image_batch(20)
    clip = vv.prepare_reference_images(images, num_frames=5, width=32, height=16)
    for out, i in zip(to_uint8(clip.frames), clip.indices):
        ref = np.asarray(Image.fromarray(_frame_rgb(i)).resize((32, 16), Image.LANCZOS))
        assert np.array_equal(out, ref)
    crop = vv.prepare_reference_images(images, num_frames=1, width=32, height=32, resize_mode="center_crop")
    ref = np.asarray(Image.fromarray(_frame_rgb(0)).resize((32, 32), Image.LANCZOS, box=(8.0, 0.0, 56.0, 48.0)))
    assert np.array_equal(to_uint8(crop.frames)[0], ref)


# ------------------------------------------------------------------------------------------------ errors


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(VAPInputError, match=match) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_corrupt_file(tmp_path, videos):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    msg = _raises("Cannot read the reference video", vv.load_reference_video, str(junk), num_frames=5, width=32, height=32)
    assert "ffmpeg" in msg  # names the fix
    data = open(videos["v20"], "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov (index) is at the end: a truncated upload
    _raises("Cannot read|no video|could be decoded", vv.load_reference_video, str(cut), num_frames=5, width=32, height=32)
    _raises("not found", vv.load_reference_video, str(tmp_path / "missing.mp4"), num_frames=5, width=32, height=32)


def test_zero_frame_videos(tmp_path):
    for name, codec in (("empty.avi", "mpeg4"), ("empty.mp4", "libx264")):
        path = make_video(tmp_path / name, 0, w=32, h=32, codec=codec)
        _raises("no video frames|no video stream", vv.load_reference_video, path, num_frames=5, width=32, height=32)
    _raises("empty", vv.prepare_reference_images, torch.zeros(0, 32, 32, 3), num_frames=5, width=32, height=32)


def test_too_few_frames(videos):
    msg = _raises("has 20 frames.*'first' needs 25", vv.load_reference_video, videos["v20"], num_frames=25,
                  width=W0, height=H0, frame_selection="first")
    assert "evenly" in msg
    _raises("has 20 frames.*'random' needs 25", vv.load_reference_video, videos["v20"], num_frames=25,
            width=W0, height=H0, frame_selection="random")
    _raises("has 10 frames", vv.prepare_reference_images, torch.rand(10, 16, 16, 3), num_frames=13,
            width=16, height=16, frame_selection="first")


@pytest.mark.parametrize("w,h", [(33, 480), (832, 470), (0, 480), (8, 16), (832, -16)])
def test_bad_size(videos, w, h):
    msg = _raises("multiple of 16", vv.load_reference_video, videos["v20"], num_frames=5, width=w, height=h)
    assert "Use " in msg
    _raises("multiple of 16", vv.prepare_reference_images, torch.rand(5, 16, 16, 3), num_frames=5, width=w, height=h)


@pytest.mark.parametrize("k", [0, 2, 48, 50, -3])
def test_bad_length(videos, k):
    msg = _raises("4k\\+1", vv.load_reference_video, videos["v20"], num_frames=k, width=W0, height=H0)
    assert "Use " in msg
    _raises("4k\\+1", vv.prepare_reference_images, torch.rand(5, 16, 16, 3), num_frames=k, width=16, height=16)


def test_bad_modes(videos):
    _raises("frame_selection", vv.load_reference_video, videos["v20"], num_frames=5, width=W0, height=H0,
            frame_selection="middle")
    _raises("resize_mode", vv.load_reference_video, videos["v20"], num_frames=5, width=W0, height=H0,
            resize_mode="pad")


# ------------------------------------------------------------------------------------------------ node (real host)


@pytest.fixture()
def node(pack):
    return importlib.import_module("comfyui_vap.nodes.reference_nodes").VAPLoadReferenceVideo


@pytest.fixture()
def input_dir(pack, tmp_path, monkeypatch, videos):
    import folder_paths
    d = tmp_path / "input"
    d.mkdir()
    with open(videos["v20"], "rb") as f:
        (d / "ref.mp4").write_bytes(f.read())
    monkeypatch.setattr(folder_paths, "input_directory", str(d))
    return d


def _run(node, **kwargs):
    out = node.execute(**kwargs)
    frames, fps, first = out.result
    return frames, fps, first


def test_node_schema_and_registration(pack, node, input_dir):
    from comfy_api.latest import io
    nodes_list = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    assert node in nodes_list
    schema = node.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == \
        ("VAPLoadReferenceVideo", "Load VAP Reference Video", "video")
    assert [i.id for i in schema.inputs] == ["file", "frame_selection", "num_frames", "width", "height",
                                             "resize_mode", "seed", "video", "images"]
    assert all(i.tooltip for i in schema.inputs)
    assert [o.display_name for o in schema.outputs] == ["reference_frames", "fps", "first_frame"]
    types = node.INPUT_TYPES()
    file_opts = types["optional"]["file"][1]
    assert file_opts.get("video_upload") is True and "ref.mp4" in file_opts["options"]
    assert types["required"]["num_frames"][1]["default"] == 49 and types["required"]["num_frames"][1]["step"] == 4
    assert types["required"]["width"][1]["default"] == 832 and types["required"]["height"][1]["default"] == 480
    assert types["optional"]["video"][0] == io.Video.io_type and types["optional"]["images"][0] == "IMAGE"


def test_node_file(node, input_dir):
    frames, fps, first = _run(node, file="ref.mp4", frame_selection="evenly", num_frames=9, width=32, height=16,
                              resize_mode="stretch", seed=0)
    assert frames.shape == (9, 16, 32, 3) and fps == 24.0
    assert indices_of(frames) == torch.linspace(0, 19, 9).long().tolist()
    assert first.shape == (1, 16, 32, 3) and torch.equal(first, frames[:1])


def test_node_video_and_images_take_precedence(node, input_dir, videos):
    from comfy_api.latest import InputImpl, Types
    common = dict(file="ref.mp4", frame_selection="first", num_frames=5, width=W0, height=H0,
                  resize_mode="stretch", seed=0)
    # a trimmed core VIDEO from a file: decoded selectively, trim kept, same frames core would give
    trimmed = InputImpl.VideoFromFile(videos["v20"], start_time=0.25, duration=0.5)
    core_frames = trimmed.get_components().images
    frames, fps, _ = _run(node, video=trimmed, **common)
    assert indices_of(frames) == [6, 7, 8, 9, 10] == indices_of(core_frames[:5]) and fps == 24.0
    # a VIDEO made of tensors: goes through the IMAGE path, keeps its frame rate
    from fractions import Fraction
    comp = InputImpl.VideoFromComponents(Types.VideoComponents(images=_image_batch(12), audio=None,
                                                               frame_rate=Fraction(8)))
    frames, fps, _ = _run(node, video=comp, **common)
    assert indices_of(frames) == [0, 1, 2, 3, 4] and fps == 8.0
    # images win over video and file; an IMAGE batch has no fps: the official export rate is reported
    batch = _image_batch(20)[10:]
    frames, fps, first = _run(node, video=comp, images=batch, **common)
    assert indices_of(frames) == [10, 11, 12, 13, 14] and fps == 16.0 and indices_of(first) == [10]


def test_node_fingerprint_follows_file(node, input_dir):
    path = input_dir / "ref.mp4"
    before = node.fingerprint_inputs(file="ref.mp4", num_frames=49)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    after = node.fingerprint_inputs(file="ref.mp4", num_frames=49)
    assert before and after and before != after
    assert node.fingerprint_inputs(file="ref.mp4") == after  # stable while the file is unchanged


def test_node_validate_inputs(node, input_dir):
    ok = dict(file="ref.mp4", num_frames=49, width=832, height=480)
    assert node.validate_inputs(**ok) is True
    assert "4k+1" in node.validate_inputs(**{**ok, "num_frames": 48})
    assert "multiple of 16" in node.validate_inputs(**{**ok, "width": 830})
    assert "multiple of 16" in node.validate_inputs(**{**ok, "height": 479})
    assert "not found" in node.validate_inputs(**{**ok, "file": "gone.mp4"})
    assert "No reference video" in node.validate_inputs(**{**ok, "file": None})
    # a connected video/images reaches validation as None: the file is then not needed
    assert node.validate_inputs(**{**ok, "file": "gone.mp4", "video": None}) is True
    assert node.validate_inputs(**{**ok, "file": None, "images": None}) is True


def test_node_errors_are_clear(node, input_dir, tmp_path):
    errors = importlib.import_module("comfyui_vap.vap_core.errors")
    (input_dir / "bad.mp4").write_bytes(b"\x00" * 1000)
    common = dict(frame_selection="evenly", num_frames=5, width=32, height=32, resize_mode="stretch", seed=0)
    with pytest.raises(errors.VAPInputError, match="Cannot read"):
        _run(node, file="bad.mp4", **common)
    with pytest.raises(errors.VAPInputError, match="No reference video"):
        _run(node, file=None, **common)
    with pytest.raises(errors.VAPInputError, match="'first' needs 25"):
        _run(node, file="ref.mp4", **{**common, "frame_selection": "first", "num_frames": 25})


def test_host_prompt_validation(node, input_dir, monkeypatch):
    """The real ComfyUI prompt validator: custom checks run, file check skipped when a video is linked."""
    import execution
    import nodes
    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "VAPLoadReferenceVideo", node)
    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "VAPTestLoadImage", nodes.LoadImage)
    widgets = dict(file="ref.mp4", frame_selection="evenly", num_frames=49, width=832, height=480,
                   resize_mode="stretch", seed=0)

    def validate(**inputs):
        prompt = {"1": {"class_type": "VAPLoadReferenceVideo", "inputs": {**widgets, **inputs}},
                  "2": {"class_type": "VAPTestLoadImage", "inputs": {"image": "x.png"}}}
        ok, errs, _ = asyncio.run(execution.validate_inputs("p", prompt, "1", {}))
        return ok, " ".join(f"{e['message']} {e['details']}" for e in errs)

    assert validate() == (True, "")
    ok, why = validate(num_frames=50)
    assert not ok and "4k+1" in why
    ok, why = validate(frame_selection="middle")
    assert not ok and "Value not in list" in why
    ok, why = validate(file="gone.mp4")
    assert not ok and "not found" in why
    ok, why = validate(file="gone.mp4", images=["2", 0])  # linked images: no file needed (2 itself is invalid)
    assert "gone.mp4" not in why
