"""Read a LoRA file of any known Z-Image format into the canonical `Lora`.

Every format names the same Linears differently; this module maps each key to a diffusers
module path (`layers.0.attention.to_q`), folds alpha/rank into a scale, splits fused `qkv`,
infers the transformer width D from the shapes and checks every shape against it. Anything
that is not a plain Z-Image LoRA is refused with a one-line UserError.

The tensors are safetensors' zero-copy views of the memory-mapped file: loading is fast and
the pages are the page cache's, but they stay mapped while any module of the file is alive.

    source          key example                                              down / up
    AI-Toolkit      diffusion_model.layers.0.attention.to_q.lora_A.weight    lora_A / lora_B
    diffusers/PEFT  transformer.layers.0.attention.to_q.lora_A.weight (+ .alpha)
    kohya/musubi    lora_unet_layers_0_attention_to_q.lora_down.weight (+ .alpha)
    fused (ComfyUI) ...attention.qkv... (A shared, B = [q; k; v]), ...attention.out...
    DiffSynth       layers.0.attention.to_q.lora_A.default.weight
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open

from ..blocks import COMPONENTS, N_LAYERS, REFINERS, expected_shape, parse_module
from ..errors import UserError
from .model import Lora, LoraModule

# Key suffix -> role. Longest first so `.lora_A.default.weight` wins over `.weight`.
_ROLE_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
)

# Key prefix -> format name. Order matters: the first that matches wins.
_PREFIXES = (
    ("diffusion_model.", "ai-toolkit"),
    ("transformer.", "diffusers"),
    ("base_model.model.", "diffusers"),
    ("lora_unet_", "kohya"),
    ("lora_transformer_", "kohya"),
    ("", "diffsynth"),
)

# Fused names of the original/ComfyUI checkpoint, relative to a block.
_FUSED_QKV = "attention.qkv"
_FUSED_OUT = "attention.out"
_BLOCK_SUFFIXES = {**{s: c for c, s in COMPONENTS.items()}, _FUSED_OUT: "to_out", _FUSED_QKV: "qkv"}
# kohya flattens dots to underscores: `attention_to_out_0` -> `attention.to_out.0`.
_KOHYA_SUFFIXES = {s.replace(".", "_"): s for s in _BLOCK_SUFFIXES}
_KOHYA_RE = re.compile(r"^(layers|noise_refiner|context_refiner)_(\d+)_(.+)$")
_DOTTED_RE = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")

# Not LoRA: LyCORIS variants and other adapters, recognised by a key pattern.
_NOT_LORA = (
    (r"\.lokr_", "a LoKr (LyCORIS) file"),
    (r"\.hada_", "a LoHa (LyCORIS) file"),
    (r"\.dora_scale$|lora_magnitude_vector", "a DoRA file"),
    (r"\.lora_mid\.", "a LoCon/Tucker file"),
    (r"\.diff(_b)?$", "a full-weight difference file"),
    (r"\.oft_", "an OFT file"),
    (r"\.a1\.weight$", "a GLoRA file"),
)

# Other models, recognised by key fragments, so a wrong file is named for what it is.
_OTHER_MODELS = (
    (("img_mlp", "txt_mlp", "img_mod"), "Qwen-Image"),
    (("double_blocks", "single_blocks", "single_transformer_blocks", "add_q_proj", "ff_context"),
     "Flux (or Chroma / HunyuanVideo)"),
    (("joint_blocks", "context_block"), "SD3"),
    (("lora_te1_", "lora_te2_", "text_encoder_2"), "SDXL"),
    (("down_blocks", "up_blocks", "input_blocks", "output_blocks", "mid_block", "middle_block"),
     "Stable Diffusion 1.x/2.x/SDXL (UNet)"),
    (("lora_te_", "text_model.encoder", "text_encoder"), "a text encoder"),
    (("self_attn", "cross_attn"), "Wan"),
    (("feed_forward.linear_1", "attn.to_q"), "Lumina 2 (diffusers naming)"),
)


def load_lora(path: str | os.PathLike) -> Lora:
    """Read one LoRA file; every problem is a UserError naming the file and the fix."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    groups, fmt = _group_keys(path, tensors)
    modules = _build_modules(path, groups, metadata)
    dim = _infer_dim(modules)
    _check_shapes(path, modules, dim)
    ordered = {p: modules[p] for p in sorted(modules, key=model_order)}
    return Lora(path=path, format=fmt, dim=dim, modules=ordered, metadata=metadata)


def load_loras(paths: Iterable[str | os.PathLike]) -> list[Lora]:
    """Read several LoRAs that will be used together: they must share the width D."""
    loras = [load_lora(p) for p in paths]
    for lora in loras[1:]:
        if lora.dim != loras[0].dim:
            raise UserError(
                f"{lora.path}: made for a transformer of width {lora.dim}, but {loras[0].path} is for width "
                f"{loras[0].dim}; LoRAs of different models cannot be combined")
    return loras


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a .safetensors LoRA file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc.__class__.__name__})") from None
    except Exception as exc:  # safetensors raises its own error types for bad or cut-off files
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise UserError(
            f"{path}: not a readable .safetensors file ({detail}); it may be truncated or another "
            f"format (zsearch reads safetensors LoRAs only, never pickled .ckpt/.pt)") from None
    if not tensors:
        raise UserError(f"{path}: holds no tensors; it is not a LoRA")
    return tensors, metadata


def _split_role(key: str) -> tuple[str, str] | None:
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _block_path(name: str) -> tuple[str, str] | None:
    """Strip a known prefix: (dotted `block.i.suffix` name, format) or None if not Z-Image."""
    for prefix, fmt in _PREFIXES:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if fmt == "kohya":
            match = _KOHYA_RE.match(rest)
            if not match or match.group(3) not in _KOHYA_SUFFIXES:
                return None
            return f"{match.group(1)}.{match.group(2)}.{_KOHYA_SUFFIXES[match.group(3)]}", fmt
        match = _DOTTED_RE.match(rest)
        if not match or match.group(3) not in _BLOCK_SUFFIXES:
            return None
        return rest, fmt
    return None


def _group_keys(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict], str]:
    """Group keys by the Z-Image Linear they adapt: {dotted name: {"down", "up", "alpha", "keys"}}."""
    keys = list(tensors)
    for pattern, what in _NOT_LORA:
        hit = next((k for k in keys if re.search(pattern, k)), None)
        if hit is not None:
            raise UserError(f"{path}: {what}, not a LoRA (key '{hit}'); zsearch merges plain LoRAs only")

    groups: dict[str, dict] = {}
    formats: Counter = Counter()
    unknown = []
    for key in keys:
        split = _split_role(key)
        located = _block_path(split[0]) if split else None
        if located is None:
            unknown.append(key)
            continue
        name, fmt = located
        formats[fmt] += 1
        group = groups.setdefault(name, {"keys": []})
        group["keys"].append(key)
        role = split[1]
        if role in group:
            raise UserError(f"{path}: keys '{group[role][0]}' and '{key}' both give the {role} of {name}; "
                            f"the file is inconsistent, re-export it")
        group[role] = (key, tensors[key])

    if not groups:
        raise UserError(f"{path}: {_describe_foreign(keys)}, not a Z-Image LoRA; use a LoRA trained for Z-Image")
    if unknown:
        raise UserError(
            f"{path}: key '{unknown[0]}' is not a LoRA weight of a Z-Image block Linear "
            f"({len(unknown)} such keys; {_describe_foreign(unknown)}); zsearch weights only "
            f"{', '.join(COMPONENTS)} in layers/noise_refiner/context_refiner")

    fmt = formats.most_common(1)[0][0]
    if any(name.endswith((_FUSED_QKV, _FUSED_OUT)) for name in groups):
        fmt = {"kohya": "kohya-fused", "ai-toolkit": "comfyui"}.get(fmt, f"{fmt}-fused")
    return groups, fmt


def _describe_foreign(keys: list[str]) -> str:
    for fragments, model in _OTHER_MODELS:
        hit = next((k for k in keys if any(f in k for f in fragments)), None)
        if hit is not None:
            return f"its keys look like {model} (e.g. '{hit}')"
    return f"no key names a Z-Image transformer module (e.g. '{keys[0]}')"


def _adapter_alphas(metadata: dict[str, str]) -> tuple[float | None, dict[str, float], bool]:
    """PEFT's `lora_adapter_metadata` (diffusers saves it): lora_alpha, alpha_pattern, use_rslora."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None, {}, False
    try:
        config = json.loads(raw)
    except ValueError:
        return None, {}, False
    config = {k.removeprefix("transformer."): v for k, v in config.items()}
    alpha = config.get("lora_alpha")
    pattern = config.get("alpha_pattern") or {}
    return (float(alpha) if alpha is not None else None), {k: float(v) for k, v in pattern.items()}, \
        bool(config.get("use_rslora"))


def _build_modules(path: Path, groups: dict[str, dict], metadata: dict[str, str]) -> dict[str, LoraModule]:
    peft_alpha, peft_pattern, rslora = _adapter_alphas(metadata)
    modules: dict[str, LoraModule] = {}
    for name, group in groups.items():
        if "down" not in group or "up" not in group:
            missing = "up (lora_B / lora_up)" if "up" not in group else "down (lora_A / lora_down)"
            raise UserError(f"{path}: {name} has no {missing} weight (found only '{group['keys'][0]}'); "
                            f"the file is incomplete, re-export it")
        (down_key, down), (up_key, up) = group["down"], group["up"]
        for key, tensor in ((down_key, down), (up_key, up)):
            if tensor.ndim != 2:
                raise UserError(f"{path}: '{key}' has shape {list(tensor.shape)}; a Z-Image LoRA weight is a "
                                f"2-D matrix (this looks like a convolution LoRA)")
            if not tensor.is_floating_point():
                raise UserError(f"{path}: '{key}' holds {tensor.dtype} values; a LoRA weight is floating point")
            if not _all_finite(tensor):
                raise UserError(f"{path}: '{key}' contains NaN or Inf values; the LoRA is corrupt (re-train or "
                                f"re-export it)")
        if down.shape[0] != up.shape[1]:
            raise UserError(f"{path}: {name}: '{down_key}' has rank {down.shape[0]} but '{up_key}' has rank "
                            f"{up.shape[1]}; the two halves of the LoRA disagree")
        rank = down.shape[0]
        scale = 1.0
        if "alpha" in group:
            alpha_key, alpha_tensor = group["alpha"]
            if alpha_tensor.numel() != 1 or not math.isfinite(float(alpha_tensor.float().reshape(-1)[0])):
                raise UserError(f"{path}: '{alpha_key}' must be one finite number")
            scale = float(alpha_tensor.float().reshape(-1)[0]) / rank
        elif peft_alpha is not None:
            alpha = next((a for pat, a in peft_pattern.items() if re.search(rf"(^|\.){re.escape(pat)}$", name)),
                         peft_alpha)
            scale = alpha / (math.sqrt(rank) if rslora else rank)

        block, index, suffix = _DOTTED_RE.match(name).groups()
        if suffix == _FUSED_QKV:
            if up.shape[0] % 3:
                raise UserError(f"{path}: fused '{up_key}' has {up.shape[0]} rows, not 3 equal parts (q, k, v)")
            for component, part in zip(("to_q", "to_k", "to_v"), up.chunk(3, dim=0)):
                _add(path, modules, f"{block}.{index}.{COMPONENTS[component]}", LoraModule(down, part, scale), name)
        else:
            _add(path, modules, f"{block}.{index}.{COMPONENTS[_BLOCK_SUFFIXES[suffix]]}",
                 LoraModule(down, up, scale), name)
    return modules


def _all_finite(tensor: torch.Tensor) -> bool:
    # max |x| is NaN or Inf exactly when some element is; one reduction, no bool tensor, and far
    # faster than torch.isfinite on bf16 CPU tensors
    return tensor.numel() == 0 or bool(torch.isfinite(tensor.abs().amax()))


def _add(path: Path, modules: dict[str, LoraModule], module_path: str, module: LoraModule, source: str) -> None:
    parsed = parse_module(module_path)
    count = REFINERS.get(parsed.block, N_LAYERS)
    if parsed.index >= count:
        raise UserError(f"{path}: {source} is outside Z-Image ({parsed.block} has {count} blocks, 0-{count - 1})")
    if parsed.block == "context_refiner" and parsed.component == "adaLN":
        raise UserError(f"{path}: {source}: context_refiner blocks have no adaLN in Z-Image; not a Z-Image LoRA")
    if module_path in modules:
        raise UserError(f"{path}: {module_path} is given twice (as {source} and under another name, e.g. fused "
                        f"qkv next to to_q/to_k/to_v); keep one form")
    modules[module_path] = module


def _implied_width(component: str, module: LoraModule) -> int:
    """The width D this module's shapes imply."""
    if component == "adaLN":
        return module.up.shape[0] // 4
    if component == "w2":
        return module.up.shape[0]
    return module.down.shape[1]


def _infer_dim(modules: dict[str, LoraModule]) -> int:
    """The width most modules imply; _check_shapes then names any module that disagrees."""
    votes = Counter(_implied_width(parse_module(p).component, m) for p, m in modules.items())
    return votes.most_common(1)[0][0]


def _check_shapes(path: Path, modules: dict[str, LoraModule], dim: int) -> None:
    for module_path, module in modules.items():
        component = parse_module(module_path).component
        out_features, in_features = expected_shape(component, dim)
        got = (module.up.shape[0], module.down.shape[1])
        if got != (out_features, in_features):
            raise UserError(
                f"{path}: {module_path} maps {got[1]}->{got[0]} features but a Z-Image transformer of width {dim} "
                f"(inferred from the other modules) has {in_features}->{out_features}; the file is not a Z-Image "
                f"LoRA or is damaged")


def model_order(module_path: str) -> tuple:
    """Sort key: refiners first, then layers, each block's components in COMPONENTS order."""
    module = parse_module(module_path)
    order = {"noise_refiner": 0, "context_refiner": 1, "layers": 2}
    return order[module.block], module.index, list(COMPONENTS).index(module.component)
