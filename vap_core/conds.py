"""Names of the conditioning entries (under ``model_conds``, on positive AND negative) that carry a VAP
reference from the conditioning nodes to the model. Defined once; shapes per variant are in docs/DESIGN.md."""

REF_LATENT = "vap_ref_latent"    # Wan [B, 36, F_ref, H, W]; CogVideoX [B, 32, n*F, H, W]: the reference video tokens
REF_CONTEXT = "vap_ref_context"  # Wan [B, 512, text_dim]; CogVideoX [B, n*226, 4096]: reference caption states
REF_CLIP = "vap_ref_clip_fea"    # Wan only [B, 257, 1280]: CLIP-H penultimate states of the reference's first frame
REF_COUNT = "vap_num_refs"       # CogVideoX only, optional CONDConstant(int n): checked against the latent
# Set (CONDConstant(True)) by the reference guider on the copy of a cond whose reference it removed: "run the plain
# base here". Wan's base is the native forward either way; CogVideoX's is the official base (its RoPE), which the
# native forward of ComfyUI 0.25 is not (docs/COGVIDEOX.md)
WITHOUT_REFERENCE = "vap_without_reference"
REFERENCE_ENTRIES = (REF_LATENT, REF_CONTEXT, REF_CLIP, REF_COUNT)  # every entry that carries a reference
