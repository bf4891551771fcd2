"""VAP Wan / CogVideoX Encode Reference: the reference video through the VAE once, as a VAP_REFERENCE.

Their inputs are the reference only (frames, VAE, CLIP vision), so ComfyUI's cache serves them when a prompt, the start
image, the seed or the batch size changes: the 'Conditioning from Reference' nodes redo only their own part."""
from comfy_api.latest import io

# The value these nodes output (vap_core/reference.py): one reference, encoded, with its size and frame count
VAPReference = io.Custom("VAP_REFERENCE")

SEARCH_ALIASES = ["video as prompt", "vap", "reference video", "encode reference", "vap reference"]


class VAPWanEncodeReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPWanEncodeReference",
            display_name="VAP Wan Encode Reference",
            category="model/conditioning/wan/vap",
            search_aliases=SEARCH_ALIASES + ["wan vap", "wan reference"],
            description="Encodes the Video-As-Prompt reference video for Wan2.1 once: its clean latents, its "
                        "first-frame condition and its CLIP features. The video to generate takes its width, "
                        "height and (minimum) length from this reference. Connect the output to 'VAP Wan "
                        "Conditioning from Reference'; editing a prompt then re-uses this encode.",
            inputs=[
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors)."),
                io.Image.Input("reference_frames", tooltip="The reference video frames from 'Load VAP Reference "
                               "Video' (4k+1 frames, e.g. 49; width and height multiples of 16, e.g. 832x480): "
                               "the video to generate gets this size."),
                io.ClipVisionOutput.Input("clip_vision_reference",
                                          tooltip="'CLIP Vision Encode' (clip_vision_h, crop center) of the "
                                                  "reference's first frame: the first_frame output of 'Load VAP "
                                                  "Reference Video' (if a whole clip is encoded, its first frame "
                                                  "is used)."),
            ],
            outputs=[VAPReference.Output(display_name="reference",
                                         tooltip="The encoded reference with its size and frame count.")],
        )

    @classmethod
    def execute(cls, vae, reference_frames, clip_vision_reference) -> io.NodeOutput:
        from ..vap_core.wan import conditioning as wc
        return io.NodeOutput(wc.encode_reference(vae, reference_frames, clip_vision_reference))


class VAPCogEncodeReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPCogEncodeReference",
            display_name="VAP CogVideoX Encode Reference",
            category="model/conditioning/cogvideox/vap",
            search_aliases=SEARCH_ALIASES + ["cogvideox vap", "cog reference"],
            description="Encodes one Video-As-Prompt reference video for CogVideoX-5b-I2V once (the clip and its "
                        "first frame through the VAE, in the official frame chunks). The video to generate takes "
                        "its width, height and length from it. Connect the output to 'VAP CogVideoX Conditioning "
                        "from Reference', which draws the posterior samples with its seed in the official order; "
                        "editing a prompt or the seed then re-uses this encode.",
            inputs=[
                io.Vae.Input("vae", tooltip="The CogVideoX-5b-I2V VAE."),
                io.Image.Input("reference_frames", tooltip="The reference video frames from 'Load VAP Reference "
                               "Video' (49 frames at 720x480 for CogVideoX-5b-I2V): the video to generate gets "
                               "this size and length."),
            ],
            outputs=[VAPReference.Output(display_name="reference",
                                         tooltip="The encoded reference with its size and frame count.")],
        )

    @classmethod
    def execute(cls, vae, reference_frames) -> io.NodeOutput:
        from ..vap_core.cogvideox import conditioning as cc
        return io.NodeOutput(cc.encode_reference(vae, reference_frames))
