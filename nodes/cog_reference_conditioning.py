"""VAP CogVideoX Conditioning from Reference: CogVideoX-I2V target image + 1 to 3 encoded VAP references and their
captions. Size and length from the references; the official posterior samples are drawn here (one seed, one stream)."""
from comfy_api.latest import io

from .reference_encode_nodes import VAPReference


def _reference_inputs(i: int) -> list:
    return [
        VAPReference.Input(f"reference_{i}", optional=True,
                           tooltip=f"Optional reference video {i} ('VAP CogVideoX Encode Reference', same size and "
                                   f"frames as the first). Needs ref_positive_{i}. The released model was trained "
                                   "with one reference."),
        io.Conditioning.Input(f"ref_positive_{i}", optional=True,
                              tooltip=f"Caption of reference video {i} (CLIP Text Encode, T5 type cogvideox)."),
    ]


class VAPCogConditioningFromReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPCogConditioningFromReference",
            display_name="VAP CogVideoX Conditioning from Reference",
            category="model/conditioning/cogvideox/vap",
            search_aliases=["video as prompt", "vap", "reference video", "cogvideox vap", "cog reference"],
            description="CogVideoX-5b-I2V image-to-video conditioning with 1 to 3 encoded Video-As-Prompt references "
                        "('VAP CogVideoX Encode Reference'), as the official pipeline prepares them: the start image "
                        "through the CogVideoX VAE, the references' posterior samples drawn from `seed` in the "
                        "official order (x0.7), each reference with its own caption. The video has the references' "
                        "size and length. Sample with 'VAP Dynamic CFG Guider', the VOID DDIM sampler and the "
                        "'simple' scheduler (see docs/COGVIDEOX.md).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt for the video to generate (CLIP Text Encode; Load CLIP "
                                      "with the T5-XXL encoder, type cogvideox)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt for the video to generate."),
                io.Conditioning.Input("ref_positive", tooltip="Caption describing reference video 1 (CLIP Text Encode)."),
                io.Vae.Input("vae", tooltip="The CogVideoX-5b-I2V VAE, for the start image."),
                VAPReference.Input("reference", tooltip="Reference video 1 from 'VAP CogVideoX Encode Reference'. "
                                   "The video to generate has its width, height and length."),
                io.Image.Input("start_image", tooltip="First frame of the video to generate (stretched to the "
                               "reference's size)."),
                io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="Videos generated at once."),
                io.Combo.Input("latent_mode", options=["sample", "mode"], default="sample",
                               tooltip="sample: draw the start image and reference latents from the VAE posterior "
                                       "with `seed`, as the official pipeline does. mode: the posterior mean "
                                       "(deterministic; what VAE Encode gives)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the VAE posterior samples (latent_mode sample only); 'VAP Official "
                                     "Noise' with the same seed gives the official initial noise."),
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
                io.Latent.Output(display_name="latent", tooltip="Empty CogVideoX latent [batch, 16, (length-1)/4+1, "
                                 "height/8, width/8] at the references' size and length."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, ref_positive, vae, reference, start_image, batch_size=1,
                latent_mode="sample", seed=0, reference_2=None, ref_positive_2=None, reference_3=None,
                ref_positive_3=None, ref_negative=None) -> io.NodeOutput:
        from ..vap_core.cogvideox import conditioning as cc
        refs = cc.encoded_references(reference, ref_positive, [(reference_2, ref_positive_2),
                                                               (reference_3, ref_positive_3)])
        cc.validate_encoded(positive, negative, vae, start_image, refs, latent_mode, ref_negative)
        first = refs[0][0]
        return io.NodeOutput(*cc.condition_encoded(positive, negative, vae, first.width, first.height, first.frames,
                                                   batch_size, start_image, refs, latent_mode, seed, ref_negative))
