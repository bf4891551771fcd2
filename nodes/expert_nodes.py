"""Load a VAP expert and attach it to a native base MODEL."""
import os

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
            category="VAP",
            description="Loads the Video-As-Prompt MoT expert (the *_mot_ref weights) from models/vap/. "
                        "Accepts an expert file written by 'python -m vap_core.convert' or an official "
                        "single-file VAP checkpoint. The base model is loaded separately with ComfyUI's own loader.",
            inputs=[
                io.Combo.Input("expert_name", options=paths.expert_files(),
                               tooltip="A file in models/vap/: the converted expert (recommended) or the "
                                       "official VAP transformer as one safetensors file."),
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
    def fingerprint_inputs(cls, expert_name, weight_dtype="default"):
        # a file replaced under the same name must not be served from cache
        path = paths.expert_path(expert_name)
        return f"{path}:{os.path.getmtime(path)}:{os.path.getsize(path)}:{weight_dtype}"

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
            category="VAP",
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
