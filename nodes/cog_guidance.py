"""VAP Dynamic CFG Guider: the official CogVideoX VAP demo's guidance for SamplerCustomAdvanced."""
from comfy_api.latest import io


class VAPDynamicCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPDynamicCFGGuider",
            display_name="VAP Dynamic CFG Guider",
            category="model/sampling/guiders",
            search_aliases=["video as prompt", "vap", "reference video", "dynamic cfg", "cogvideox cfg"],
            description="Classifier-free guidance with the official CogVideoX VAP dynamic scale "
                        "g_t = 1 + cfg * (1 - cos(pi * ((N - t) / N) ** 5)) / 2, t the model timestep (999..0), "
                        "N the number of steps; reproduces the official demo (use_dynamic_cfg=True) including its "
                        "step-to-step jumps between 1 and 1 + cfg. For SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The CogVideoX model with the VAP expert applied."),
                io.Conditioning.Input("positive", tooltip="positive from 'VAP CogVideoX Conditioning'."),
                io.Conditioning.Input("negative", tooltip="negative from 'VAP CogVideoX Conditioning'."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale g (official: 6)."),
                io.Boolean.Input("dynamic", default=True,
                                 tooltip="On: the official dynamic schedule (demo default). Off: constant cfg, "
                                         "like the core CFG Guider."),
                io.Boolean.Input("zero_terminal_snr", default=False, optional=True,
                                 tooltip="On: the first step at alpha_bar(999) = 0 exactly, as the official "
                                         "CogVideoX scheduler (zero terminal SNR); ComfyUI's schedule stops at "
                                         "4.9e-8, which moves the result by ~1e-3. Off: core's schedule."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, dynamic=True, zero_terminal_snr=False) -> io.NodeOutput:
        from ..vap_core.cogvideox.guider import DynamicCFGGuider
        guider = DynamicCFGGuider(model, dynamic=dynamic, zero_terminal_snr=zero_terminal_snr)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
