"""zsearch's per-module weights as ComfyUI LoRA patches on a ModelPatcher.

Each module of each LoRA becomes the adapter ComfyUI's own loader builds (comfy.lora.load_lora on
the module's factors: LoRA, LoKr or LoHa), aimed where ComfyUI's key map for the model aims it
(q, k and v into their slices of the fused `attention.qkv`, `to_out.0` into `attention.out`), and
added with `add_patches` at strength = node strength x recipe weight x the file's own alpha scale.
So the patches are ComfyUI's usual ones: unpatching, other LoRA nodes and hooks work as always.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from zsearch.errors import UserError
from zsearch.lora.model import AnyModule, Lora

PREFIX = "diffusion_model."  # how ComfyUI's key map names a diffusers module path of the model


def module_tensors(name: str, module: AnyModule) -> dict[str, torch.Tensor]:
    """The module's factors under the key names ComfyUI's adapters read, without alpha (scale 1)."""
    if module.kind == "lora":
        return {f"{name}.lora_A.weight": module.down, f"{name}.lora_B.weight": module.up}
    prefix = "lokr" if module.kind == "lokr" else "hada"
    return {f"{name}.{prefix}_{part}": tensor for part, tensor in module.tensors().items()}


def _target_shape(model_sd: dict[str, torch.Tensor], target) -> tuple[int, ...] | None:
    key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
    if key not in model_sd:
        return None
    shape = list(model_sd[key].shape)
    if offset is not None:  # (dim, start, size): a slice of a fused weight
        shape[offset[0]] = offset[2]
    return tuple(shape)


def _target(key_map: dict, model_sd: dict[str, torch.Tensor], lora: Lora, path: str, module: AnyModule):
    target = key_map.get(f"{PREFIX}{path}")
    shape = None if target is None else _target_shape(model_sd, target)
    if shape is None:
        raise UserError(f"{lora.path}: the MODEL has no '{path}'; connect a Z-Image model (this LoRA is for "
                        f"Z-Image, width {lora.dim})")
    if tuple(shape[:2]) != tuple(module.shape):
        raise UserError(f"{lora.path}: '{path}' is {module.shape[0]}x{module.shape[1]} in the LoRA but "
                        f"{shape[0]}x{shape[1]} in the MODEL; the LoRA (width {lora.dim}) is not for this model")
    return target


def add_weighted_loras(model, loras: list[Lora], scale_maps: list[dict[str, float]], strength: float = 1.0):
    """A clone of ModelPatcher `model` with every module m of LoRA i patched at
    strength x scale_maps[i][m] (modules missing from a map, or at 0, are left out)."""
    import comfy.lora

    patcher = model.clone()
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    model_sd = patcher.model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    # (LoRA, strength) -> {name: target}: two LoRAs on one module must stay two patches
    groups: dict[tuple[int, float], dict[str, object]] = defaultdict(dict)
    for i, (lora, scales) in enumerate(zip(loras, scale_maps)):
        for path, module in lora.modules.items():
            total = strength * scales.get(path, 0.0) * module.scale
            if total == 0.0:
                continue
            name = f"zsearch{i}.{path}"
            groups[i, total][name] = _target(key_map, model_sd, lora, path, module)
            tensors.update(module_tensors(name, module))
    for (_, total), to_load in groups.items():  # add_patches takes one strength per call
        patches = comfy.lora.load_lora(tensors, to_load, log_missing=False)
        if len(patches) != len(to_load):
            raise AssertionError(f"ComfyUI built {len(patches)} patches of {len(to_load)} modules")
        patcher.add_patches(patches, total)
    return patcher
