"""Tiny stand-ins for the text/vision encoders that cannot be made tiny in their real layout.

* UMT5-XXL: ComfyUI's ``CLIPLoader`` recognises it only with 24 blocks of d_ff 10240 and uses the fixed
  XXL config, so a tiny file is refused. The stand-in is still a real ``comfy.sd.CLIP`` built from
  core classes (``comfy.text_encoders.wan.te`` + ``WanT5Tokenizer``: pads to 512 tokens, zeroes the
  masked tokens, d_model 4096) with a 1-layer config passed through core's own
  ``umt5xxl_model_config`` option, and a SentencePiece model trained in-process (no download).
  Core ``CLIPTextEncode`` runs on it unchanged.
* CLIP ViT-H/14: ``comfy.clip_vision.load`` picks the fixed 32-layer H config by key names. The
  stand-in is a real ``comfy.clip_vision.ClipVisionModel`` built from a 2-layer config of the same width
  (1280) and patching (14 px, 224 px input), so core ``CLIPVisionEncode`` returns a genuine
  ``comfy.clip_vision.Output`` with ``penultimate_hidden_states`` [1, 257, 1280], a deterministic
  function of the image.
* T5-XXL (CogVideoX): core ``CLIPLoader(type='cogvideox')`` builds the fixed XXL config (d_model 4096,
  24 layers). The stand-in is a real ``comfy.sd.CLIP`` from core classes (``comfy.text_encoders.cogvideo``:
  ``CogVideoXTokenizer`` with ComfyUI's shipped T5 tokenizer, pads to 226 tokens; ``CogVideoXT5XXL``) with
  the same vocabulary (32128) and a 1-layer, ``TINY_T5_DIM``-wide config passed through core's own
  ``t5xxl_model_config`` option, so core ``CLIPTextEncode`` returns [1, 226, TINY_T5_DIM].

All are stored as .safetensors files in the usual model folders (``text_encoders/``, ``clip_vision/``)
with their config in the metadata, so a workflow switches to them by changing only the loader's
``class_type``. Weights are seeded and random: outputs are meaningless, shapes and code paths are real.
"""
from __future__ import annotations

import io
import json

import torch

UMT5_KEY = "vap_test_umt5_config"
CLIP_VISION_KEY = "vap_test_clip_vision_config"
T5_KEY = "vap_test_t5_config"

TINY_UMT5_CONFIG = {
    # only what differs from comfy/text_encoders/umt5_config_xxl.json (merged by core via model_options)
    "d_ff": 32, "d_kv": 16, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1, "vocab_size": 256,
}

TINY_T5_DIM = 32  # width of the tiny CogVideoX T5 (the conditioning is [1, 226, TINY_T5_DIM])
TINY_T5_CONFIG = {
    # only what differs from comfy/text_encoders/t5_config_xxl.json (merged by core via model_options);
    # the vocabulary stays 32128 so ComfyUI's shipped T5 tokenizer is used unchanged
    "d_model": TINY_T5_DIM, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1,
}

TINY_CLIP_VISION_CONFIG = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2,
    "patch_size": 14, "projection_dim": 64, "torch_dtype": "float32",
}

_CORPUS = [
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards",
    "A young woman with curly hair plays a violin in front of a vintage green car on a tree-lined street.",
    "A man stands with his back to the camera on a dirt path overlooking rolling green tea plantations.",
    "The camera remains static while the object inflates like a balloon and floats out of the frame.",
    "a cat, a dog, a horse, a red ball, the sky, water, fire, light particles, snow, a toy character",
    "0 1 2 3 4 5 6 7 8 9 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"-()",
]


def train_spiece_model(vocab_size: int = 256) -> bytes:
    """A small SentencePiece model with UMT5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 8), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
        character_coverage=1.0, minloglevel=2)
    return out.getvalue()


def _seeded(shape, generator, name: str) -> torch.Tensor:
    """Norm weights ~1, biases small, embeddings N(0, 1), matrices 1/sqrt(fan_in): activations stay O(1)."""
    if name.endswith("bias"):
        return 0.02 * torch.randn(shape, generator=generator)
    if len(shape) == 1:  # norm weights, CLIP class embedding
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    if "shared" in name or "embedding" in name and "patch" not in name:
        return torch.randn(shape, generator=generator)
    fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
    return torch.randn(shape, generator=generator) / fan_in ** 0.5


def _t5_family_state_dict(text_encoder_module, config_json: str, overrides: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights for ComfyUI's own T5 encoder class (``comfy.text_encoders.t5.T5``) at the core config
    ``config_json`` (next to ``text_encoder_module``) with ``overrides`` applied."""
    import os

    import comfy.ops
    import comfy.text_encoders.t5
    path = os.path.join(os.path.dirname(os.path.realpath(text_encoder_module.__file__)), config_json)
    with open(path) as f:
        config = {**json.load(f), **overrides}
    with torch.device("meta"):
        model = comfy.text_encoders.t5.T5(config, torch.float32, "meta", comfy.ops.manual_cast)
    generator = torch.Generator().manual_seed(seed)
    return {k: _seeded(tuple(v.shape), generator, k).float().contiguous() for k, v in sorted(model.state_dict().items())}


def tiny_umt5_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights for ComfyUI's own UMT5 encoder class at the tiny config, plus ``spiece_model``."""
    import comfy.text_encoders.wan
    sd = _t5_family_state_dict(comfy.text_encoders.wan, "umt5_config_xxl.json", TINY_UMT5_CONFIG, seed)
    sd["spiece_model"] = torch.frombuffer(bytearray(train_spiece_model(TINY_UMT5_CONFIG["vocab_size"])),
                                          dtype=torch.uint8).clone()
    return sd


def write_tiny_umt5(path: str, seed: int = 0) -> str:
    from safetensors.torch import save_file
    save_file(tiny_umt5_state_dict(seed), path, metadata={UMT5_KEY: json.dumps(TINY_UMT5_CONFIG)})
    return path


def _load_t5_family(path: str, key: str, what: str, target, config_option: str, device: str):
    """A ``comfy.sd.CLIP`` of ``target`` from a stand-in file, its tiny config (metadata ``key``) passed through
    core's own ``config_option`` model option; a ``spiece_model`` tensor becomes tokenizer data."""
    import comfy.sd
    import comfy.utils
    sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get(key, "null"))
    if config is None:
        raise ValueError(f"{path} is not a tiny {what} stand-in (no {key} metadata)")
    model_options = {config_option: config}
    if device == "cpu":
        model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
    tokenizer_data = {"spiece_model": sd.pop("spiece_model")} if "spiece_model" in sd else {}
    params = sum(v.numel() for v in sd.values())
    return comfy.sd.CLIP(target, tokenizer_data=tokenizer_data, parameters=params, state_dict=[sd],
                         model_options=model_options)


def load_tiny_umt5(path: str, device: str = "default"):
    """A ``comfy.sd.CLIP`` exactly as ``CLIPLoader(type='wan')`` builds it, at the tiny config."""
    import comfy.supported_models_base
    import comfy.text_encoders.wan
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.wan.WanT5Tokenizer, comfy.text_encoders.wan.te())
    return _load_t5_family(path, UMT5_KEY, "UMT5", target, "umt5xxl_model_config", device)


def tiny_clip_vision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import comfy.clip_model
    import comfy.ops
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(dict(TINY_CLIP_VISION_CONFIG), torch.float32, "meta",
                                                           comfy.ops.manual_cast)
    generator = torch.Generator().manual_seed(seed)
    return {k: _seeded(tuple(v.shape), generator, k).float().contiguous() for k, v in sorted(model.state_dict().items())}


def write_tiny_clip_vision(path: str, seed: int = 0) -> str:
    from safetensors.torch import save_file
    sd = {k: v.half() for k, v in tiny_clip_vision_state_dict(seed).items()}  # half the file size
    save_file(sd, path, metadata={CLIP_VISION_KEY: json.dumps(TINY_CLIP_VISION_CONFIG)})
    return path


def load_tiny_clip_vision(path: str):
    """A ``comfy.clip_vision.ClipVisionModel`` (core class) at the tiny config."""
    import comfy.clip_vision
    import comfy.utils
    sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config = json.loads((metadata or {}).get(CLIP_VISION_KEY, "null"))
    if config is None:
        raise ValueError(f"{path} is not a tiny CLIP vision stand-in (no {CLIP_VISION_KEY} metadata)")
    model = comfy.clip_vision.ClipVisionModel(config)
    missing, _ = model.load_sd(sd)
    if missing:
        raise ValueError(f"{path}: missing CLIP vision weights {missing[:5]}")
    return model


def tiny_t5_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights for ComfyUI's own T5 encoder class (``comfy.text_encoders.t5.T5``) at the tiny config."""
    import comfy.text_encoders.sd3_clip
    return _t5_family_state_dict(comfy.text_encoders.sd3_clip, "t5_config_xxl.json", TINY_T5_CONFIG, seed)


def write_tiny_t5(path: str, seed: int = 0) -> str:
    from safetensors.torch import save_file
    save_file(tiny_t5_state_dict(seed), path, metadata={T5_KEY: json.dumps(TINY_T5_CONFIG)})
    return path


def load_tiny_t5(path: str, device: str = "default"):
    """A ``comfy.sd.CLIP`` exactly as ``CLIPLoader(type='cogvideox')`` builds it, at the tiny config."""
    import comfy.supported_models_base
    import comfy.text_encoders.cogvideo
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.cogvideo.CogVideoXTokenizer,
                                                    comfy.text_encoders.cogvideo.CogVideoXT5XXL)
    return _load_t5_family(path, T5_KEY, "T5", target, "t5xxl_model_config", device)
