"""Load a VAP expert and attach it to a native base MODEL."""
from comfy_api.latest import io

from . import paths

# the choices of core's UNETLoader (vap_core/expert/weight_dtype.py holds the same tuple; this module must not
# import vap_core at start-up)
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")

VAPExpertType = io.Custom("VAP_EXPERT")


class VAPExpertLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPExpertLoader",
            display_name="Load VAP Expert",
            category="model/loaders",
            search_aliases=["video as prompt", "vap", "reference video", "vap expert", "mot expert"],
            description="Loads the Video-As-Prompt MoT expert (the *_mot_ref weights) from models/vap/. "
                        "Accepts the official release folder as downloaded (models/vap/<release>/transformer/ with "
                        "its shards: only the expert tensors are read, tensor by tensor), an expert file written "
                        "by 'python -m vap_core.convert', or an official single-file VAP checkpoint. The base "
                        "model is loaded separately with ComfyUI's own loader.",
            inputs=[
                io.Combo.Input("expert_name", options=paths.expert_files(),
                               tooltip="What is in models/vap/: an official release folder (listed as "
                                       "'<release>/', e.g. 'Video-As-Prompt-Wan2.1-14B/'), a converted expert "
                                       "file (smaller, loads faster) or the official VAP transformer as one "
                                       "safetensors file."),
                # optional with a default: graphs saved before this input existed load and run unchanged
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True,
                               advanced=True,
                               tooltip="As in 'Load Diffusion Model': default keeps the file's dtypes; fp8_* "
                                       "store the expert's weights in fp8 (about half the memory of bf16, "
                                       "computed in the model's dtype); fp8_e4m3fn_fast also uses fp8 matrix "
                                       "multiplication on GPUs that have it."),
            ],
            outputs=[io.Custom("VAP_EXPERT").Output(display_name="vap_expert",
                                                    tooltip="Connect to 'Apply VAP Expert'.")],
        )

    @classmethod
    def validate_inputs(cls, expert_name, weight_dtype="default"):
        # replaces ComfyUI's "value not in list" (an empty models/vap/ must say what to put where)
        available = paths.expert_files()
        if expert_name not in available:
            if not available:
                return f"models/vap/ holds no VAP expert. {paths.HOW_TO_FILL}"
            return (f"'{expert_name}' is not in models/vap/ (found: {', '.join(available[:6])}). Pick one of "
                    f"those, or put it there. {paths.HOW_TO_FILL}")
        if weight_dtype not in WEIGHT_DTYPES:
            return f"weight_dtype '{weight_dtype}' is not one of {', '.join(WEIGHT_DTYPES)}."
        return True

    @classmethod
    def fingerprint_inputs(cls, expert_name, weight_dtype="default"):
        # a file (or a release's shard) replaced under the same name must not be served from cache
        return f"{paths.fingerprint(paths.expert_path(expert_name))}:{weight_dtype}"

    @classmethod
    def execute(cls, expert_name, weight_dtype="default") -> io.NodeOutput:
        from ..vap_core.expert.loading import load_expert
        return io.NodeOutput(load_expert(paths.expert_path(expert_name), weight_dtype))


class VAPApplyExpert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPApplyExpert",
            display_name="Apply VAP Expert",
            category="model/patch/vap",
            search_aliases=["video as prompt", "vap", "reference video", "vap expert", "mot expert"],
            description="Adds the VAP expert to a native Wan2.1-I2V-14B (or CogVideoX-5B-I2V) MODEL. The result "
                        "is a normal MODEL: LoRA loaders, ModelSamplingSD3 and KSampler keep working. Without a "
                        "VAP reference in the conditioning it behaves exactly like the base.",
            inputs=[
                io.Model.Input("model", tooltip="The base model from 'Load Diffusion Model' (fp16, fp8 or GGUF)."),
                io.Custom("VAP_EXPERT").Input("vap_expert", tooltip="From 'Load VAP Expert'."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True, advanced=True,
                               tooltip="Fraction of the sampling steps after which the expert starts. 0 = from the "
                                       "first step (official)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True, advanced=True,
                               tooltip="Fraction of the sampling steps after which the expert stops and the plain base "
                                       "runs (faster, weaker transfer). 1 = to the last step (official)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, start_percent=0.0, end_percent=1.0, **_):
        if start_percent > end_percent:
            return f"start_percent ({start_percent}) must not be after end_percent ({end_percent})."
        return True

    @classmethod
    def execute(cls, model, vap_expert, start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        from ..vap_core.expert.loading import apply_expert
        return io.NodeOutput(apply_expert(model, vap_expert, start_percent, end_percent))
