"""VAP Wan Conditioning: core WanImageToVideo for the target, plus the reference for the VAP expert."""
from comfy_api.latest import io

MAX_RESOLUTION = 16384  # = nodes.MAX_RESOLUTION of ComfyUI (not imported: "nodes" is also this pack's folder name)


class VAPWanConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPWanConditioning",
            display_name="VAP Wan Conditioning",
            category="model/conditioning/wan/vap",
            search_aliases=["video as prompt", "vap", "reference video", "wan vap", "wan reference"],
            description="Wan2.1 image-to-video conditioning with a Video-As-Prompt reference. The target part is "
                        "exactly core 'WanImageToVideo' (start image, mask, CLIP vision); on top it adds the "
                        "reference video, its caption and its CLIP features for 'Apply VAP Expert'. Use the "
                        "outputs with KSampler like WanImageToVideo's.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt for the video to generate (CLIP Text Encode with the Wan UMT5 encoder)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for the video to generate."),
                io.Conditioning.Input("ref_positive", tooltip="Caption describing the reference video (CLIP Text Encode). "
                                      "Exactly one caption: Wan VAP takes one reference."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors)."),
                io.Int.Input("width", default=832, min=16, max=MAX_RESOLUTION, step=16,
                             tooltip="Output width in pixels, multiple of 16 (VAP Wan was trained at 832x480)."),
                io.Int.Input("height", default=480, min=16, max=MAX_RESOLUTION, step=16,
                             tooltip="Output height in pixels, multiple of 16."),
                io.Int.Input("length", default=49, min=1, max=MAX_RESOLUTION, step=4,
                             tooltip="Frames to generate, 4k+1 (VAP was trained with 49). The reference must "
                                     "have this many frames, or fewer (4k+1): e.g. a 49-frame reference for a "
                                     "longer video sampled with 'WAN Context Windows'."),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Videos generated at once."),
                io.Image.Input("start_image", tooltip="First frame of the video to generate (as for WanImageToVideo)."),
                io.Image.Input("reference_frames", tooltip="The reference video frames from 'Load VAP Reference Video', "
                               "already selected to `length` frames. Other sizes are stretched to width x height."),
                # required (Wan2.1-I2V and its expert need both); same position as when they were optional, so saved
                # graphs (which always had them connected) load with the same slots
                io.ClipVisionOutput.Input("clip_vision_start_image",
                                          tooltip="'CLIP Vision Encode' (clip_vision_h, crop center) of the start image."),
                io.ClipVisionOutput.Input("clip_vision_reference",
                                          tooltip="'CLIP Vision Encode' (clip_vision_h, crop center) of the "
                                                  "reference's first selected frame: the first_frame output of 'Load VAP Reference Video' (if a whole clip is encoded, its first frame is used)."),
                io.Conditioning.Input("ref_negative", optional=True,
                                      tooltip="Negative prompt for the reference branch in the negative pass. If not "
                                              "connected, the negative prompt above is used (the official default)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Target conditioning + the VAP reference with its caption."),
                io.Conditioning.Output(display_name="negative", tooltip="Target negative + the VAP reference with the negative text."),
                io.Latent.Output(display_name="latent", tooltip="Empty Wan latent [batch, 16, (length-1)/4+1, height/8, width/8]."),
            ],
            # replaced by the Encode Reference + VAPWanConditioningFromReference pair (same numbers, the reference
            # encode cached apart from the prompts); kept so saved workflows load and run unchanged
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, positive, negative, ref_positive, vae, width, height, length, batch_size, start_image,
                reference_frames, clip_vision_start_image=None, clip_vision_reference=None,
                ref_negative=None) -> io.NodeOutput:
        from comfy_extras.nodes_wan import WanImageToVideo

        from ..vap_core.wan import conditioning as wc
        wc.validate(positive, negative, ref_positive, vae, width, height, length, reference_frames,
                    clip_vision_start_image, clip_vision_reference, ref_negative=ref_negative)
        # the target: exactly what the native node builds (concat_latent_image, concat_mask, clip_vision_output)
        target = WanImageToVideo.execute(positive, negative, vae, width, height, length, batch_size,
                                         start_image=start_image, clip_vision_output=clip_vision_start_image)
        positive, negative, latent = target.args
        positive, negative = wc.add_wan_reference(positive, negative, ref_positive, vae, reference_frames,
                                                  clip_vision_reference, width, height, ref_negative=ref_negative)
        return io.NodeOutput(positive, negative, latent)
