"""The expert loader's ``weight_dtype`` option: the choices of core's ``UNETLoader``, applied the way core applies
them to a diffusion model (docs/HOST_INTEGRATION.md#weight-dtype-of-the-expert).

Core turns the choice into ``model_options`` (``dtype``, ``fp8_optimizations``), builds the model's layers in that
dtype and picks its layer classes with ``comfy.ops.pick_operations(weight dtype, compute dtype)``: ``manual_cast``
(weights cast to the compute dtype at each call), or ``fp8_ops`` (fp8 matrix multiplication) where the choice is
``fp8_e4m3fn_fast`` and the device computes in fp8. The expert is built with ``manual_cast`` layers from the file's
tensors; this module then stores its parameters in the chosen dtype and, where ``pick_operations`` picks other
layer classes, gives its layers those classes.
"""
from __future__ import annotations

import torch

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")  # the order core's UNETLoader lists


def model_options(weight_dtype: str) -> dict:
    """The ``model_options`` core's ``UNETLoader.load_unet`` passes for ``weight_dtype``."""
    if weight_dtype not in WEIGHT_DTYPES:
        from ..errors import VAPInputError
        raise VAPInputError(f"weight_dtype must be one of {', '.join(WEIGHT_DTYPES)}; got '{weight_dtype}'.")
    options = {}
    if weight_dtype in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        options["dtype"] = torch.float8_e4m3fn
    if weight_dtype == "fp8_e4m3fn_fast":
        options["fp8_optimizations"] = True
    if weight_dtype == "fp8_e5m2":
        options["dtype"] = torch.float8_e5m2
    return options


def _cast_parameters(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every floating parameter in ``dtype``, as core's layers built in that dtype hold them (biases, norms and
    modulation tables included). Kept: convolutions (the patch embeddings; core builds Wan's in float32 whatever
    the dtype, and there is no fp8 convolution) and buffers (CogVideoX's positional table).

    The kept tensors are copied out of the file: loaded memory-mapped, any one of them left pointing into the
    file keeps the whole mapping, and with it every page the cast read (the whole file) in the process's RSS:
    a 4 GB fp8 Wan expert from its 8 GB bf16 file sat at 4.5 GB + 8 GB of mapped pages before this copy
    (bench/results/convert_fullsize.md)."""
    for sub in module.modules():
        keep = isinstance(sub, torch.nn.modules.conv._ConvNd)
        for name, param in list(sub.named_parameters(recurse=False)):
            if not keep and param.is_floating_point() and param.dtype != dtype:
                # through float32: no direct conversion between the two fp8 formats
                value = param.data.to(torch.float32).to(dtype) if param.dtype.itemsize == 1 else param.data.to(dtype)
            else:
                value = param.data.clone()
            setattr(sub, name, torch.nn.Parameter(value, requires_grad=False))
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None:
                sub._buffers[name] = buf.clone()


def _use_operations(module: torch.nn.Module, operations) -> int:
    """Give each ``manual_cast`` layer the class ``operations`` has for it (same attributes, another forward);
    returns how many layers changed. Needed because the expert's layers are built as ``manual_cast``."""
    import comfy.ops
    changed = 0
    for sub in module.modules():
        cls = type(sub)
        target = getattr(operations, cls.__name__, None)
        if getattr(comfy.ops.manual_cast, cls.__name__, None) is cls and target is not None and target is not cls \
                and issubclass(target, cls):
            sub.__class__ = target
            for attr in ("scale_weight", "scale_input"):  # what fp8_ops' reset_parameters sets at construction
                if not hasattr(sub, attr):
                    setattr(sub, attr, None)
            changed += 1
    return changed


def apply_weight_dtype(expert, weight_dtype: str):
    """Store ``expert``'s weights as ``weight_dtype`` asks (in place) and return it; "default" keeps the file's."""
    options = model_options(weight_dtype)
    dtype = options.get("dtype")
    if dtype is None:
        return expert
    import comfy.model_management
    import comfy.ops
    patcher = expert.patcher
    _cast_parameters(patcher.model, dtype)
    patcher.size = 0  # ModelPatcher measures the module lazily: measure it again in the new dtype
    compute = comfy.model_management.unet_manual_cast(dtype, patcher.load_device)
    operations = comfy.ops.pick_operations(dtype, compute, load_device=patcher.load_device,
                                           fp8_optimizations=options.get("fp8_optimizations", False))
    _use_operations(patcher.model, operations)
    return expert
