"""The reference video (the "video prompt") of VAP: load, pick frames, resize like the official pipelines."""
import os

import folder_paths
from comfy_api.latest import io

SELECTION_MODES = ["evenly", "first", "random"]  # = vap_core.video.SELECTION_MODES (no vap_core import at load)
RESIZE_MODES = ["stretch", "center_crop"]        # = vap_core.video.RESIZE_MODES
UNKNOWN_FPS = 16.0  # the official demos export at 16 fps; reported when the source has no frame rate

_NOT_CONNECTED = object()  # validate_inputs: absent = not connected; a link arrives as None


def _input_videos() -> list[str]:
    input_dir = folder_paths.get_input_directory()
    try:
        files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    except OSError:
        return []
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


def _file_path(file) -> str | None:
    if not file:
        return None
    return folder_paths.get_annotated_filepath(file)


class VAPLoadReferenceVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPLoadReferenceVideo",
            display_name="Load VAP Reference Video",
            category="video",
            search_aliases=["video as prompt", "vap", "reference video", "vap reference", "load reference video"],
            description="Loads the reference video whose semantics (effect, motion, camera, style) VAP transfers "
                        "to your image. Picks num_frames frames and resizes them exactly like the official "
                        "pipeline (49 frames spread evenly, Lanczos stretch to the generation size). Only the "
                        "picked frames are decoded into memory. A connected 'video' or 'images' input is used "
                        "instead of the file.",
            inputs=[
                io.Combo.Input("file", options=_input_videos(), upload=io.UploadType.video, optional=True,
                               tooltip="A video in ComfyUI's input folder (use the upload button to add one). "
                                       "Ignored when 'video' or 'images' is connected."),
                io.Combo.Input("frame_selection", options=SELECTION_MODES, default="evenly",
                               tooltip="How the frames are picked, as in the official pipeline. evenly: spread "
                                       "num_frames over the whole clip (official default; frames repeat if the clip "
                                       "is shorter). first: the first num_frames frames. random: a contiguous "
                                       "window of num_frames frames at a seeded random start."),
                io.Int.Input("num_frames", default=49, min=1, max=1025, step=4,
                             tooltip="Frames to use, 4k+1 (49 = official). Through 'VAP ... Encode Reference' the "
                                     "video gets this length (Wan: plus extra_frames)."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip="Width the frames are resized to; a multiple of 16 (Wan 832, CogVideoX 720). "
                                     "Through 'VAP ... Encode Reference' the video gets this width."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip="Height the frames are resized to; a multiple of 16 (480 for both official "
                                     "models). Through 'VAP ... Encode Reference' the video gets this height."),
                io.Combo.Input("resize_mode", options=RESIZE_MODES, default="stretch",
                               tooltip="stretch: Lanczos resize to exactly width x height, ignoring the aspect "
                                       "ratio (the official method). center_crop: scale to cover width x height and "
                                       "crop the centre (keeps proportions, loses the edges)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=False,
                             tooltip="Seed of the 'random' frame selection; ignored by evenly and first."),
                io.Video.Input("video", optional=True,
                               tooltip="Optional VIDEO (e.g. from core 'Load Video'); used instead of the file. A "
                                       "trimmed video keeps its trim."),
                io.Image.Input("images", optional=True,
                               tooltip="Optional IMAGE batch of frames (e.g. from a video loader that outputs "
                                       "images); used instead of the file and the video."),
            ],
            outputs=[
                io.Image.Output(display_name="reference_frames",
                                tooltip="The selected, resized frames: connect to the VAP conditioning node."),
                io.Float.Output(display_name="fps",
                                tooltip="Frame rate of the source video (16 when unknown, e.g. for an IMAGE batch)."),
                io.Image.Output(display_name="first_frame",
                                tooltip="The first selected frame, for CLIP Vision Encode (the official reference "
                                        "CLIP input)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, file=None, **kwargs):
        # the file can be replaced under the same name: include its modification time and size
        path = _file_path(file)
        if path is None or not os.path.isfile(path):
            return ""
        return f"{path}:{os.path.getmtime(path)}:{os.path.getsize(path)}"

    @classmethod
    def validate_inputs(cls, file=None, num_frames=49, width=832, height=480,
                        video=_NOT_CONNECTED, images=_NOT_CONNECTED):
        from ..vap_core.errors import VAPInputError
        from ..vap_core.video import check_num_frames, check_size
        try:  # a value arriving through a link is None here and is checked in execute
            if num_frames is not None:
                check_num_frames(num_frames)
            if width is not None and height is not None:
                check_size(width, height)
        except VAPInputError as e:
            return str(e)
        if video is _NOT_CONNECTED and images is _NOT_CONNECTED:
            if not file:
                return ("No reference video: pick or upload a file, or connect a 'video' or 'images' input.")
            if not folder_paths.exists_annotated_filepath(file):
                return f"Reference video file not found: {file}. Upload it again or pick another file."
        return True

    @classmethod
    def execute(cls, file=None, frame_selection="evenly", num_frames=49, width=832, height=480,
                resize_mode="stretch", seed=0, video=None, images=None) -> io.NodeOutput:
        from ..vap_core import video as vv
        from ..vap_core.errors import VAPInputError
        settings = dict(num_frames=num_frames, width=width, height=height, frame_selection=frame_selection,
                        resize_mode=resize_mode, seed=seed, progress=_progress())
        if images is not None:
            clip = vv.prepare_reference_images(images, **settings)
        elif video is not None:
            clip = _clip_from_video(video, settings)
        else:
            path = _file_path(file)
            if path is None:
                raise VAPInputError("No reference video: pick or upload a file, or connect a 'video' or 'images' input.")
            clip = vv.load_reference_video(path, **settings)
        fps = clip.fps if clip.fps else UNKNOWN_FPS
        return io.NodeOutput(clip.frames, float(fps), clip.first_frame)


def _progress():
    """The decoder's progress callback: ComfyUI's progress bar (the node's bar in the UI) and its interrupt check,
    so a long clip shows how far decoding is and Cancel stops it between frames."""
    import comfy.model_management
    import comfy.utils
    state = {"bar": None, "total": 0, "shown": -1}

    def progress(done: int, total: int):
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not total:
            return  # still counting the frames
        if total != state["total"]:
            state.update(bar=comfy.utils.ProgressBar(total), total=total, shown=-1)
        step = max(1, total // 100)  # at most ~100 updates to the UI, and the last one
        if done == total or done - state["shown"] >= step:
            state["bar"].update_absolute(done, total)
            state["shown"] = done
    return progress


def _clip_from_video(video, settings):
    """A file-backed core VIDEO is decoded selectively (keeping its trim); any other VIDEO via its components."""
    from comfy_api.latest import InputImpl

    from ..vap_core import video as vv
    if isinstance(video, InputImpl.VideoFromFile):
        start, duration = video.get_active_trim_window()
        return vv.load_reference_video(video.get_stream_source(), start_time=start, duration=duration, **settings)
    components = video.get_components()
    rate = components.frame_rate
    return vv.prepare_reference_images(components.images, fps=float(rate) if rate else None, **settings)
