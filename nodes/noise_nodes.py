"""VAP Official Noise: the official pipelines' initial noise for a seed (NOISE for SamplerCustomAdvanced)."""
from comfy_api.latest import io

VARIANTS = ["wan2.1", "cogvideox"]       # = vap_core.official_noise.VARIANTS (no vap_core import at load)
DEVICES = ["cpu", "cuda"]                # = vap_core.official_noise.DEVICES
DTYPES = ["float32", "bfloat16"]         # = vap_core.official_noise.DTYPES


class VAPOfficialNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VAPOfficialNoise",
            display_name="VAP Official Noise",
            category="model/sampling/noise",
            search_aliases=["video as prompt", "vap", "reference video", "official noise", "vap seed"],
            description="The initial noise the official Video-As-Prompt pipeline draws for a seed. Wan2.1: "
                        "randn([1,16,F,h,w]) from a generator seeded with the seed (on cpu/float32 the same as "
                        "RandomNoise). CogVideoX: the official pipeline draws the start image's VAE sample, the noise "
                        "and the references' VAE samples from ONE generator; this gives the noise part, so with "
                        "'VAP CogVideoX Conditioning' latent_mode sample and the same seed the graph replays the "
                        "official random numbers exactly. See docs/OFFICIAL_MODEL.md#random-numbers.",
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The official pipeline's seed (CogVideoX: the same as the conditioning's seed)."),
                io.Combo.Input("variant", options=VARIANTS, default="cogvideox",
                               tooltip="Which official pipeline's random stream to replay."),
                io.Combo.Input("device", options=DEVICES, default="cpu", optional=True,
                               tooltip="cpu: the official call with generator=torch.Generator('cpu').manual_seed(seed) "
                                       "(works everywhere). cuda: the stream of a CUDA generator / the demo scripts' "
                                       "global seed on the GPU; needs an NVIDIA GPU (a CPU cannot draw it)."),
                io.Combo.Input("dtype", options=DTYPES, default="float32", optional=True,
                               tooltip="The dtype the official run drew in: float32, or bfloat16 for the CogVideoX demo "
                                       "(a bf16 pipeline draws its noise in bf16). Returned as float32."),
            ],
            outputs=[io.Noise.Output()],
        )

    @classmethod
    def execute(cls, noise_seed, variant, device="cpu", dtype="float32") -> io.NodeOutput:
        from ..vap_core.official_noise import OfficialNoise
        return io.NodeOutput(OfficialNoise(noise_seed, variant, device, dtype))
