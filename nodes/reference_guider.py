"""VAP Reference Guider: CFG plus a reference-strength term, for SamplerCustomAdvanced (Wan and CogVideoX)."""
from comfy_api.latest import io


class VAPReferenceGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPReferenceGuider",
            display_name="VAP Reference Guider",
            category="model/sampling/guiders",
            search_aliases=["video as prompt", "vap", "reference video", "reference strength", "reference guidance",
                            "vap cfg"],
            description="Classifier-free guidance with a control on how strongly the reference video is followed: "
                        "out = uncond + cfg * (cond - uncond) + reference_scale * (cond - cond_without_reference), "
                        "where cond_without_reference is the positive prompt through the plain base (no reference). "
                        "reference_scale 0 is exactly the official guidance (core CFG Guider, or with dynamic_cfg the "
                        "VAP Dynamic CFG Guider) at no extra cost; any other value adds one base pass per step. "
                        "For SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="The model with the VAP expert applied ('Apply VAP Expert')."),
                io.Conditioning.Input("positive", tooltip="positive from a VAP conditioning node."),
                io.Conditioning.Input("negative", tooltip="negative from a VAP conditioning node."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale, as in the CFG Guider (official: Wan 5, CogVideoX 6)."),
                io.Float.Input("reference_scale", default=0.0, min=-10.0, max=10.0, step=0.05, round=0.001,
                               tooltip="Extra push towards the reference video. 0 = official (no extra cost). "
                                       "Positive: follow the reference more; negative: less. Try 0.5 to 2; each "
                                       "non-zero value costs one plain-base pass per step."),
                io.Boolean.Input("negative_without_reference", default=False, advanced=True,
                                 tooltip="Run the negative prompt without the reference, so cfg pushes text and "
                                         "reference together (stronger reference; the negative pass becomes a "
                                         "cheaper base pass). Off = official."),
                io.Boolean.Input("dynamic_cfg", default=False, advanced=True,
                                 tooltip="CogVideoX: the official dynamic cfg schedule of the CogVideoX VAP demo "
                                         "(as 'VAP Dynamic CFG Guider'). Off: constant cfg (Wan official)."),
                io.Boolean.Input("zero_terminal_snr", default=False, optional=True, advanced=True,
                                 tooltip="CogVideoX (with dynamic_cfg): the first step at alpha_bar(999) = 0 exactly, "
                                         "as the official CogVideoX scheduler; ComfyUI's schedule stops at 4.9e-8. "
                                         "Off: core's schedule."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, reference_scale=0.0, negative_without_reference=False,
                dynamic_cfg=False, zero_terminal_snr=False) -> io.NodeOutput:
        if dynamic_cfg or zero_terminal_snr:
            from ..vap_core.cogvideox.guider import DynamicCFGGuider
            guider = DynamicCFGGuider(model, dynamic=dynamic_cfg, zero_terminal_snr=zero_terminal_snr,
                                      reference_scale=reference_scale,
                                      negative_without_reference=negative_without_reference)
        else:
            from ..vap_core.reference_guider import ReferenceGuider
            guider = ReferenceGuider(model, reference_scale, negative_without_reference)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
