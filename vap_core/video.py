"""Reference-video input: decode, select frames and resize exactly as the official VAP pipelines do.

No ComfyUI import here (PyAV, torch, numpy and PIL only), so this runs and is tested without a host.

Official behaviour reproduced (``pipeline_wan_i2v_mot.py`` / ``pipeline_cogvideox_image2video_mot.py``,
see docs/OFFICIAL_MODEL.md#reference-frame-selection-and-resize):

* frame selection on the decoded clip of ``n`` frames:
  ``evenly`` ``idx = torch.linspace(0, n - 1, num_frames).long()`` (frames repeat when ``n < num_frames``),
  ``first`` the first ``num_frames`` frames, ``random`` a random contiguous window of ``num_frames`` frames
  (here drawn from ``random.Random(seed)``, which equals the official ``random.randint`` after ``random.seed(seed)``);
* pixels: each selected RGB frame (8-bit, as a PIL image) resized to exactly ``(width, height)`` with PIL
  Lanczos, a stretch without crop. ``center_crop`` is an addition of this pack (scale to cover, centre crop).

Frames come back as float32 ``[T, H, W, 3]`` in ``0..1`` (ComfyUI's IMAGE layout).

Memory: a file is read in two passes. The first counts the video packets (demux only, nothing is decoded),
which gives the frame count; the second decodes frame by frame and converts and keeps only the selected
frames (already resized). If the decoded count disagrees with the packet count (codecs with frame reordering
quirks, broken packets), a third pass re-selects with the true count. At no time are more source frames
held than are kept; :class:`DecodeStats` records this.
"""
from __future__ import annotations

import io
import logging
import os
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import BinaryIO, Callable, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import VAPInputError

SELECTION_MODES = ("evenly", "first", "random")
RESIZE_MODES = ("stretch", "center_crop")
SIZE_MULTIPLE = 16

Source = Union[str, os.PathLike, BinaryIO]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Checks


def check_size(width: int, height: int) -> None:
    """Official pipelines need H and W multiples of 16 (VAE /8 and 2x2 patches)."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise VAPInputError(f"Reference {name} must be a whole number of pixels, got {value!r}.")
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise VAPInputError(
                f"Reference {name} {value} is not a positive multiple of {SIZE_MULTIPLE}. Use {lower} or "
                f"{lower + SIZE_MULTIPLE}, and the same width/height as the video you generate "
                f"(Wan 832x480 or 480x832, CogVideoX 720x480).")


def check_num_frames(num_frames: int) -> None:
    """The video VAEs compress time 4x after the first frame, so a clip has 4k+1 frames."""
    if not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames < 1 \
            or (num_frames - 1) % 4:
        if isinstance(num_frames, (int, np.integer)) and not isinstance(num_frames, bool) and num_frames >= 1:
            lower = (num_frames - 1) // 4 * 4 + 1
            hint = f"Use {lower} or {lower + 4}"
        else:
            hint = "Use 49 (the official setting)"
        raise VAPInputError(
            f"num_frames {num_frames!r} is not of the form 4k+1 (1, 5, 9, ..., 49, ..., 81). {hint}, and the "
            f"same length as the video you generate.")


def check_mode(frame_selection: str, resize_mode: str) -> None:
    if frame_selection not in SELECTION_MODES:
        raise VAPInputError(f"frame_selection {frame_selection!r} is unknown; choose one of {', '.join(SELECTION_MODES)}.")
    if resize_mode not in RESIZE_MODES:
        raise VAPInputError(f"resize_mode {resize_mode!r} is unknown; choose one of {', '.join(RESIZE_MODES)}.")


def check_settings(num_frames: int, width: int, height: int, frame_selection: str = "evenly",
                   resize_mode: str = "stretch") -> None:
    """All checks that do not need the video; raises :class:`VAPInputError`."""
    check_num_frames(num_frames)
    check_size(width, height)
    check_mode(frame_selection, resize_mode)


# --------------------------------------------------------------------------------------------------------------
# Selection and resize


def select_indices(total: int, num_frames: int, frame_selection: str = "evenly", seed: int = 0) -> list[int]:
    """Indices into a clip of ``total`` frames, as the official pipeline picks them."""
    if total <= 0:
        raise VAPInputError("The reference video has no frames. Use a video with at least one frame.")
    if frame_selection == "evenly":
        if total < num_frames:
            log.warning("VAP reference: the clip has %d frames, fewer than num_frames=%d; 'evenly' repeats frames "
                        "(as the official pipeline does). A longer reference or fewer frames avoids this.",
                        total, num_frames)
        # default float dtype and .long() truncation, exactly as the official code
        return torch.linspace(0, total - 1, num_frames).long().tolist()
    if frame_selection in ("first", "random"):
        if total < num_frames:
            raise VAPInputError(
                f"The reference has {total} frames but frame_selection '{frame_selection}' needs {num_frames} "
                f"consecutive frames. Use frame_selection 'evenly' (it spreads {num_frames} picks over the whole "
                f"clip, repeating frames), lower num_frames, or use a longer reference video.")
        if frame_selection == "first":
            return list(range(num_frames))
        start = random.Random(seed).randint(0, total - num_frames)
        return list(range(start, start + num_frames))
    raise VAPInputError(f"frame_selection {frame_selection!r} is unknown; choose one of {', '.join(SELECTION_MODES)}.")


def resize_image(image: Image.Image, width: int, height: int, resize_mode: str = "stretch") -> Image.Image:
    """``stretch``: PIL Lanczos to exactly (width, height), the official method. ``center_crop``: scale to cover
    and crop the centre (one Lanczos resample of the centred crop box, no double resampling)."""
    if image.size == (width, height):
        return image
    if resize_mode == "stretch":
        return image.resize((width, height), Image.LANCZOS)
    if resize_mode == "center_crop":
        return ImageOps.fit(image, (width, height), Image.LANCZOS, centering=(0.5, 0.5))
    raise VAPInputError(f"resize_mode {resize_mode!r} is unknown; choose one of {', '.join(RESIZE_MODES)}.")


def _resize_uint8(rgb: np.ndarray, width: int, height: int, resize_mode: str) -> np.ndarray:
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return np.ascontiguousarray(rgb)
    return np.asarray(resize_image(Image.fromarray(rgb, "RGB"), width, height, resize_mode))


# --------------------------------------------------------------------------------------------------------------
# Progress

# ``progress(done, total)``: called after every decoded (or resized) frame with the frames done so far and the frames
# to go through, and with (0, 0) every COUNT_CHECK_EVERY packets while the frames are being counted. It may raise to
# stop the work (the node passes ComfyUI's progress bar and interrupt check; this module stays host-free).
Progress = Callable[[int, int], None]
COUNT_CHECK_EVERY = 64


# --------------------------------------------------------------------------------------------------------------
# Result types


@dataclass
class DecodeStats:
    """What the decoder did: the memory check of the tests reads ``peak_kept``."""
    packets_counted: int = 0     # frame count from the demux pass
    frames_decoded: int = 0      # frames decoded in the last decode pass (in the trim window)
    frames_kept: int = 0         # distinct source frames converted and kept
    peak_kept: int = 0           # most frames held at once by the decoder
    decode_passes: int = 0       # 1 normally, 2 when the packet count was wrong
    skipped_packets: int = 0     # packets the decoder rejected (corrupt data)


@dataclass
class ReferenceClip:
    frames: torch.Tensor                 # [T, H, W, 3] float32 0..1
    fps: float | None                    # frame rate of the source (None: unknown)
    indices: list[int]                   # selected source frame indices, len T
    source_frames: int                   # frames in the source (in its trim window)
    stats: DecodeStats | None = field(default=None)

    @property
    def first_frame(self) -> torch.Tensor:
        """[1, H, W, 3]: the official CLIP input of the reference (``ref_video[0]`` after selection)."""
        return self.frames[:1]


# --------------------------------------------------------------------------------------------------------------
# Decoding a file


def _describe(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return "the connected video"


def _open(source: Source):
    import av
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise VAPInputError(f"Reference video {_describe(source)} not found. Put it in ComfyUI's input folder "
                                f"(or upload it with the node's upload button) and pick it again.")
    elif hasattr(source, "seek"):
        source.seek(0)
    try:
        container = av.open(os.fspath(source) if isinstance(source, os.PathLike) else source, mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VAPInputError(
            f"Cannot read the reference video {_describe(source)}: {e}. The file is damaged or not a video. "
            f"Re-export it as an H.264 MP4 (e.g. ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4).") from e
    if not container.streams.video:
        container.close()
        raise VAPInputError(
            f"The reference {_describe(source)} has no video stream (no frames). Use a video file with at least one "
            f"frame; an MP4 written without any frame looks like this.")
    return container


def _fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(Fraction(rate))
    return None


def _window(stream, start_time: float, duration: float) -> tuple[int | None, int | None]:
    """Presentation-time window in stream time_base units, mirroring core ``VideoFromFile`` trimming."""
    if not start_time and not duration:
        return None, None
    tb = stream.time_base
    start_pts = int(start_time / tb) if start_time else 0
    end_pts = int((start_time + duration) / tb) if duration else None
    return start_pts, end_pts


def _in_window(pts, start_pts, end_pts) -> bool:
    if pts is None:
        return True
    if start_pts is not None and pts < start_pts:
        return False
    return end_pts is None or pts < end_pts


def _count_packets(source: Source, start_time: float, duration: float, progress: Progress | None = None) -> int:
    import av
    with _open(source) as container:
        stream = container.streams.video[0]
        start_pts, end_pts = _window(stream, start_time, duration)
        n = 0
        try:
            for packet in container.demux(stream):
                if packet.size and _in_window(packet.pts, start_pts, end_pts):
                    n += 1
                    if progress is not None and n % COUNT_CHECK_EVERY == 0:
                        progress(0, 0)  # counting: no total yet, but the caller may stop us
        except av.error.FFmpegError as e:  # truncated container: count what could be read
            log.warning("VAP reference video: demux stopped early (%s)", e)
        return n


def _decode_selected(source: Source, wanted: set[int], width: int, height: int, resize_mode: str,
                     start_time: float, duration: float, stats: DecodeStats, progress: Progress | None = None,
                     total: int = 0) -> tuple[dict[int, np.ndarray], int, float | None]:
    """One decode pass; converts and keeps only the frames whose index is in ``wanted``."""
    import av
    kept: dict[int, np.ndarray] = {}
    index = 0
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _fps(stream)
        start_pts, end_pts = _window(stream, start_time, duration)
        if start_pts:
            container.seek(start_pts, stream=stream)

        def frames():
            try:
                for packet in container.demux(stream):
                    try:
                        yield from packet.decode()
                    except av.error.InvalidDataError:
                        stats.skipped_packets += 1
            except av.error.FFmpegError as e:
                log.warning("VAP reference video: demux stopped early (%s)", e)

        for frame in frames():
            if not _in_window(frame.pts, start_pts, end_pts):
                if end_pts is not None and frame.pts is not None and frame.pts >= end_pts:
                    break
                continue
            if index in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                rotation = getattr(frame, "rotation", 0) or 0
                if rotation:
                    rgb = np.rot90(rgb, k=int(round(rotation // 90)), axes=(0, 1))
                kept[index] = _resize_uint8(np.ascontiguousarray(rgb), width, height, resize_mode)
                stats.peak_kept = max(stats.peak_kept, len(kept))
            index += 1
            if progress is not None:
                progress(min(index, total), total)
    stats.frames_decoded = index
    stats.frames_kept = len(kept)
    stats.decode_passes += 1
    return kept, index, fps


def load_reference_video(source: Source, num_frames: int = 49, width: int = 832, height: int = 480,
                         frame_selection: str = "evenly", resize_mode: str = "stretch", seed: int = 0,
                         start_time: float = 0.0, duration: float = 0.0,
                         progress: Progress | None = None) -> ReferenceClip:
    """Decode ``source`` (path or binary file object), keeping only the selected frames, resized.

    ``start_time`` / ``duration`` (seconds; duration 0 = to the end) restrict the clip first, as a trimmed core
    VIDEO does. ``progress``: see ``Progress``. Raises :class:`VAPInputError` with the fix for every unusable input.
    """
    check_settings(num_frames, width, height, frame_selection, resize_mode)
    stats = DecodeStats()
    total = _count_packets(source, start_time, duration, progress)
    stats.packets_counted = total
    if total == 0:
        raise VAPInputError(f"The reference video {_describe(source)} contains no video frames"
                            + (" in the trimmed range" if (start_time or duration) else "")
                            + ". Use a video with at least one frame.")
    indices = select_indices(total, num_frames, frame_selection, seed)
    kept, decoded, fps = _decode_selected(source, set(indices), width, height, resize_mode, start_time, duration, stats,
                                          progress, total)
    if decoded != total:
        # the packet count was not the frame count: select again on the true count (rare; one more pass)
        log.info("VAP reference video: %d packets but %d decoded frames; selecting again", total, decoded)
        if decoded == 0:
            raise VAPInputError(
                f"No frame of the reference video {_describe(source)} could be decoded (damaged data or an "
                f"unsupported codec). Re-export it as an H.264 MP4 (ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4).")
        total = decoded
        indices = select_indices(total, num_frames, frame_selection, seed)
        kept.clear()
        kept, decoded, fps = _decode_selected(source, set(indices), width, height, resize_mode, start_time, duration,
                                              stats, progress, total)
        missing = [i for i in indices if i not in kept]
        if missing:
            raise VAPInputError(
                f"The reference video {_describe(source)} decodes differently on each read ({decoded} vs {total} "
                f"frames). Re-export it as an H.264 MP4 (ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4).")
    frames = torch.from_numpy(np.stack([kept[i] for i in indices])).float().div_(255.0)
    return ReferenceClip(frames=frames, fps=fps, indices=indices, source_frames=total, stats=stats)


def probe_video(source: Source) -> tuple[int, float | None, tuple[int, int]]:
    """(frame count from the packets, fps, (width, height)) without decoding any frame."""
    total = _count_packets(source, 0.0, 0.0)
    with _open(source) as container:
        stream = container.streams.video[0]
        return total, _fps(stream), (stream.width, stream.height)


# --------------------------------------------------------------------------------------------------------------
# An already-decoded IMAGE batch


def prepare_reference_images(images: torch.Tensor, num_frames: int = 49, width: int = 832, height: int = 480,
                             frame_selection: str = "evenly", resize_mode: str = "stretch", seed: int = 0,
                             fps: float | None = None, progress: Progress | None = None) -> ReferenceClip:
    """Same selection and resize on an IMAGE batch ``[T, H, W, C]`` (0..1). Frames that need resizing go
    through 8-bit RGB and PIL Lanczos like the official pipeline; frames already at the size are kept as they are.
    ``progress``: see ``Progress`` (called per resized frame)."""
    check_settings(num_frames, width, height, frame_selection, resize_mode)
    if not isinstance(images, torch.Tensor):
        raise VAPInputError(f"images must be an IMAGE batch tensor [frames, height, width, channels], "
                            f"got {type(images).__name__}.")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise VAPInputError(f"images must be an IMAGE batch [frames, height, width, 3], got shape "
                            f"{tuple(images.shape)}. Connect the IMAGE output of a video/image loader.")
    total = int(images.shape[0])
    if total == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise VAPInputError("The connected images batch is empty (no frames). Connect a non-empty IMAGE batch.")
    indices = select_indices(total, num_frames, frame_selection, seed)
    if images.shape[-1] == 4:
        images = images[..., :3]
    elif images.shape[-1] == 1:
        images = images.expand(*images.shape[:-1], 3)

    stats = DecodeStats(frames_decoded=total, decode_passes=0)
    if images.shape[1] == height and images.shape[2] == width:
        frames = images[indices].to(torch.float32).cpu().clone()
        stats.frames_kept = len(set(indices))
    else:
        done: dict[int, torch.Tensor] = {}
        unique = list(dict.fromkeys(indices))
        for i in unique:
            rgb = (images[i].to(torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
            done[i] = torch.from_numpy(_resize_uint8(rgb, width, height, resize_mode).copy())
            if progress is not None:
                progress(len(done), len(unique))
        frames = torch.stack([done[i] for i in indices]).float().div_(255.0)
        stats.frames_kept = len(done)
    stats.peak_kept = stats.frames_kept
    return ReferenceClip(frames=frames, fps=fps, indices=indices, source_frames=total, stats=stats)
