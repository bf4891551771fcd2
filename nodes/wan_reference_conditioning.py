"""VAP Wan Conditioning from Reference: core WanImageToVideo for the target + an encoded VAP reference and its
captions. Size from the reference; no VAE encode of the reference here (see reference_encode_nodes.py)."""
from comfy_api.latest import io

from .reference_encode_nodes import VAPReference

MAX_FRAMES = 16384


class VAPWanConditioningFromReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPWanConditioningFromReference",
            display_name="VAP Wan Conditioning from Reference",
            category="model/conditioning/wan/vap",
            search_aliases=["video as prompt", "vap", "reference video", "wan vap", "wan reference"],
            description="Wan2.1 image-to-video conditioning with an encoded Video-As-Prompt reference ('VAP Wan "
                        "Encode Reference'). The target part is exactly core 'WanImageToVideo' (start image, mask, "
                        "CLIP vision) at the reference's width and height; on top it adds the reference and its "
                        "caption for 'Apply VAP Expert'. Use the outputs with KSampler like WanImageToVideo's.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt for the video to generate (CLIP Text Encode with the Wan UMT5 encoder)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for the video to generate."),
                io.Conditioning.Input("ref_positive", tooltip="Caption describing the reference video (CLIP Text "
                                      "Encode). Exactly one caption: Wan VAP takes one reference."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors), for the start image."),
                VAPReference.Input("reference", tooltip="The reference from 'VAP Wan Encode Reference'. The video "
                                   "to generate has its width and height."),
                io.Image.Input("start_image", tooltip="First frame of the video to generate (as for "
                               "WanImageToVideo), stretched to the reference's size with Lanczos like the official "
                               "pipeline."),
                io.ClipVisionOutput.Input("clip_vision_start_image",
                                          tooltip="'CLIP Vision Encode' (clip_vision_h, crop center) of the start image."),
                io.Int.Input("extra_frames", default=0, min=0, max=MAX_FRAMES, step=4,
                             tooltip="Frames to generate beyond the reference's length (a multiple of 4). 0: the "
                                     "video is as long as the reference (VAP was trained with 49 for both). More: "
                                     "a longer video, sampled with 'WAN Context Windows'; every window sees the "
                                     "whole reference."),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Videos generated at once."),
                io.Conditioning.Input("ref_negative", optional=True,
                                      tooltip="Negative prompt for the reference branch in the negative pass. If not "
                                              "connected, the negative prompt above is used (the official default)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Target conditioning + the VAP reference with its caption."),
                io.Conditioning.Output(display_name="negative", tooltip="Target negative + the VAP reference with the negative text."),
                io.Latent.Output(display_name="latent", tooltip="Empty Wan latent [batch, 16, (length-1)/4+1, height/8, "
                                 "width/8], length = the reference's frames + extra_frames."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, ref_positive, vae, reference, start_image, clip_vision_start_image,
                extra_frames=0, batch_size=1, ref_negative=None) -> io.NodeOutput:
        from comfy_extras.nodes_wan import WanImageToVideo

        from ..vap_core.wan import conditioning as wc
        wc.validate_from_reference(positive, negative, ref_positive, vae, reference, extra_frames,
                                   clip_vision_start_image, ref_negative=ref_negative)
        length = wc.target_length(reference, extra_frames)
        # the target: exactly what the native node builds (concat_latent_image, concat_mask, clip_vision_output)
        start_image = wc.fit_start_images(start_image, reference.width, reference.height)
        target = WanImageToVideo.execute(positive, negative, vae, reference.width, reference.height, length,
                                         batch_size, start_image=start_image,
                                         clip_vision_output=clip_vision_start_image)
        positive, negative, latent = target.args
        positive, negative = wc.attach_wan_reference(positive, negative, ref_positive, reference.latent,
                                                     reference.clip, ref_negative=ref_negative)
        return io.NodeOutput(positive, negative, latent)
