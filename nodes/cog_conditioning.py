"""VAP CogVideoX Conditioning: CogVideoX-I2V target image + 1 to 3 reference videos for the VAP expert."""
from comfy_api.latest import io

MAX_RESOLUTION = 16384  # = nodes.MAX_RESOLUTION of ComfyUI (not imported: "nodes" is also this pack's folder name)


def _reference_inputs(i: int) -> list:
    return [
        io.Image.Input(f"reference_frames_{i}", optional=True,
                       tooltip=f"Optional reference video {i} ('Load VAP Reference Video', same num_frames). "
                               f"Needs ref_positive_{i}. The released model was trained with one reference."),
        io.Conditioning.Input(f"ref_positive_{i}", optional=True,
                              tooltip=f"Caption of reference video {i} (CLIP Text Encode, T5 type cogvideox)."),
    ]


class VAPCogConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPCogConditioning",
            display_name="VAP CogVideoX Conditioning",
            category="model/conditioning/cogvideox/vap",
            search_aliases=["video as prompt", "vap", "reference video", "cogvideox vap", "cog reference"],
            description="CogVideoX-5b-I2V image-to-video conditioning with 1 to 3 Video-As-Prompt references, as the "
                        "official pipeline prepares them: start image and references through the CogVideoX VAE "
                        "(x0.7), each reference with its own caption. Sample with 'VAP Dynamic CFG Guider', the "
                        "VOID DDIM sampler and the 'simple' scheduler (see docs/COGVIDEOX.md).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt for the video to generate (CLIP Text Encode; Load CLIP "
                                      "with the T5-XXL encoder, type cogvideox)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for the video to generate."),
                io.Conditioning.Input("ref_positive", tooltip="Caption describing reference video 1 (CLIP Text Encode)."),
                io.Vae.Input("vae", tooltip="The CogVideoX-5b-I2V VAE."),
                io.Int.Input("width", default=720, min=16, max=MAX_RESOLUTION, step=16,
                             tooltip="Output width in pixels. CogVideoX-5b-I2V only takes 720 (its learned positional "
                                     "embedding is for 720x480)."),
                io.Int.Input("height", default=480, min=16, max=MAX_RESOLUTION, step=16,
                             tooltip="Output height in pixels. CogVideoX-5b-I2V only takes 480."),
                io.Int.Input("length", default=49, min=1, max=MAX_RESOLUTION, step=4,
                             tooltip="Frames to generate, 4k+1 (VAP CogVideoX: 49). Every reference must have "
                                     "exactly this many frames."),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Videos generated at once."),
                io.Image.Input("start_image", tooltip="First frame of the video to generate (stretched to width x height)."),
                io.Image.Input("reference_frames", tooltip="Reference video 1 from 'Load VAP Reference Video', "
                               "already selected to `length` frames."),
                io.Combo.Input("latent_mode", options=["sample", "mode"], default="sample",
                               tooltip="sample: draw the start image and reference latents from the VAE posterior "
                                       "with `seed`, as the official pipeline does. mode: the posterior mean "
                                       "(deterministic; what VAE Encode gives)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the VAE posterior sample (latent_mode sample only)."),
                *_reference_inputs(2),
                *_reference_inputs(3),
                io.Conditioning.Input("ref_negative", optional=True,
                                      tooltip="Negative prompt for the reference branch in the negative pass, used for "
                                              "every reference. If not connected, the negative prompt above is used "
                                              "(the official default)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Target conditioning + start image + the references."),
                io.Conditioning.Output(display_name="negative", tooltip="Target negative + start image + the references with the negative text."),
                io.Latent.Output(display_name="latent", tooltip="Empty CogVideoX latent [batch, 16, (length-1)/4+1, height/8, width/8]."),
            ],
            # replaced by the Encode Reference + VAPCogConditioningFromReference pair (same numbers, the reference
            # encode cached apart from the prompts); kept so saved workflows load and run unchanged
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, positive, negative, ref_positive, vae, width, height, length, batch_size, start_image,
                reference_frames, latent_mode="sample", seed=0, reference_frames_2=None, ref_positive_2=None,
                reference_frames_3=None, ref_positive_3=None, ref_negative=None) -> io.NodeOutput:
        from ..vap_core.cogvideox import conditioning as cc
        refs = cc.references(reference_frames, ref_positive,
                             [(reference_frames_2, ref_positive_2), (reference_frames_3, ref_positive_3)])
        cc.validate(positive, negative, vae, width, height, length, start_image, refs, latent_mode, ref_negative)
        return io.NodeOutput(*cc.condition(positive, negative, vae, width, height, length, batch_size, start_image,
                                           refs, latent_mode, seed, ref_negative))
