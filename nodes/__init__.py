"""V3 node registration. Node ids are published API: never rename them."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from . import paths
from .cog_reference_conditioning import VAPCogConditioningFromReference
from .reference_encode_nodes import VAPCogEncodeReference, VAPWanEncodeReference
from .wan_reference_conditioning import VAPWanConditioningFromReference
from .cog_conditioning import VAPCogConditioning
from .cog_guidance import VAPDynamicCFGGuider
from .expert_nodes import VAPApplyExpert, VAPExpertLoader
from .noise_nodes import VAPOfficialNoise
from .reference_guider import VAPReferenceGuider
from .reference_nodes import VAPLoadReferenceVideo
from .wan_conditioning import VAPWanConditioning

NODE_LIST: list[type[io.ComfyNode]] = [VAPExpertLoader, VAPApplyExpert, VAPWanConditioning, VAPLoadReferenceVideo,
                                       VAPCogConditioning, VAPDynamicCFGGuider, VAPOfficialNoise, VAPReferenceGuider]


class VAPExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)


async def comfy_entrypoint() -> VAPExtension:
    paths.register_model_folder()
    return VAPExtension()


# The encoded-reference nodes (a VAP_REFERENCE from 'Encode Reference', then 'Conditioning from Reference'); they
# replace VAPWanConditioning / VAPCogConditioning, which stay registered (deprecated) for saved workflows
NODE_LIST += [VAPWanEncodeReference, VAPWanConditioningFromReference, VAPCogEncodeReference,
              VAPCogConditioningFromReference]
