"""Which Z-Image module a LoRA key names, and what a file's keys say it is.

Names are matched on their "flat" form, with every `.` and `_` read as one separator, so kohya's
`lora_unet_layers_0_attention_to_q`, VideoX-Fun's `lora_unet__layers_0_…`, LyCORIS' `lycoris_…`
and musubi's converter output (`context.refiner.0`, `adaLN.modulation.0`) all land on the
module they name. No two Z-Image module paths share a flat form. Files of other models, text
encoders, and adapters that are not LoRA/LoKr/LoHa are refused by their keys, with a one-line
UserError that says what the file is.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import torch

from zsearch.lora.blocks import COMPONENTS, OTHER_MODULES, REFINERS
from zsearch.errors import UserError

# Key suffix -> role. `.lora_A.<adapter>.weight` (PEFT/DiffSynth) is matched by _ADAPTER_RE.
_ROLE_SUFFIXES = (
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),  # "dot" trainers (diffusers reads them)
    (".alpha", "alpha"),
    *((f".lokr_{n}", f"lokr_{n}") for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")),
    *((f".hada_{n}", f"hada_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b")),
)
_ADAPTER_RE = re.compile(r"^(.+)\.lora_([AB])\.[A-Za-z0-9_-]+\.weight$")

# Key prefix -> format name. The first that matches wins.
_PREFIXES = (
    ("model.diffusion_model.", "ai-toolkit"),
    ("diffusion_model.", "ai-toolkit"),
    ("base_model.model.transformer.", "diffusers"),
    ("base_model.model.", "diffusers"),
    ("transformer.", "diffusers"),
    ("lora_unet_", "kohya"),
    ("lora_transformer_", "kohya"),
    ("lycoris_", "lycoris"),
    ("", "diffsynth"),
)

FUSED_QKV = "attention.qkv"
FUSED_OUT = "attention.out"


def _flat(name: str) -> str:
    return re.sub(r"[._]+", ".", name).strip(".")


_BLOCK_SUFFIX_OF_FLAT = {_flat(s): s for s in (*COMPONENTS.values(), FUSED_QKV, FUSED_OUT)}
_BLOCK_OF_FLAT = {_flat(b): b for b in ("layers", *REFINERS)}
_OTHER_OF_FLAT = {_flat(alias): path for path, aliases in OTHER_MODULES.items() for alias in (path, *aliases)}
# What musubi's diffusers converter leaves of names with underscores (diffusers repairs the same)
_MANGLED = ("context.refiner", "noise.refiner", "adaLN.modulation", "t.embedder", "cap.embedder", "x.embedder",
            "final.layer")
_FLAT_BLOCK_RE = re.compile(r"^(layers|noise\.refiner|context\.refiner)\.(\d+)\.(.+)$")

# Adapters that are not LoRA/LoKr/LoHa, recognised by a key pattern.
_NOT_LORA = (
    (r"\.dora_scale$|lora_magnitude_vector|\.magnitude$",
     "a DoRA file (a weight-decomposed update: its delta depends on the base weights' norms, so it cannot be "
     "merged as a LoRA)"),
    (r"\.lora_mid\.|\.lokr_t2$|\.hada_t[12]$", "a LoCon/LyCORIS Tucker (convolution) file"),
    (r"\.diff(_b)?$", "a full-weight or bias difference file (.diff/.diff_b); re-extract it without bias/full "
                      "differences"),
    (r"\.oft_|\.oft_blocks$|\.oft_diag$", "an OFT/BOFT file"),
    (r"\.[ab][12]\.weight$", "a GLoRA file"),
)

# Other models, by a key fragment no Z-Image file has (checked in this order).
_OTHER_MODELS = (
    (r"double_blocks|single_blocks|single_transformer_blocks|guidance_in|distilled_guidance",
     "Flux (or a model built like it: Chroma, HunyuanVideo)"),
    (r"img_mlp|txt_mlp|img_mod|txt_mod", "Qwen-Image"),
    (r"joint_blocks|context_block|x_block", "SD3"),
    (r"lora_te[12]_|text_encoder_2", "SDXL (its two text encoders)"),
    (r"input_blocks|output_blocks|middle_block|down_blocks|up_blocks|mid_block", "SDXL or Stable Diffusion 1.x/2.x (a UNet)"),
    ("", None),  # text encoders: _refuse_text_encoder
    (r"self_attn|cross_attn|(^|[._])blocks[._]\d+[._](attn1|attn2|ffn)", "Wan"),
    (r"feed_forward[._]linear_\d|time_caption_embed|(^|[._])layers[._]\d+[._]attn[._]", "Lumina 2 (diffusers naming)"),
    (r"conditional_transformer|attention[._]o([._]|$)|adaln_modulation", "Ideogram 4"),
    (r"(layers|refiner)[._]\d+[._]adaLN_modulation[._]1", "Lumina 2 (its blocks' adaLN is adaLN_modulation.1)"),
)
_DIFFUSERS_BLOCKS = re.compile(r"(^|[._])transformer_blocks[._]\d+[._](attn|ff|ff_context|norm1|norm1_context)[._]")
_TEXT_ENCODER = re.compile(r"lora_te\d?_|text_encoder|text_model|(^|[._])te\d?[._]")

# Widths of other models that share Z-Image's names (Lumina 2, Ideogram 4) or could be mistaken for it.
OTHER_MODEL_WIDTHS = {
    2304: "Lumina 2", 4608: "Ideogram 4", 3072: "Flux or Qwen-Image", 2432: "SD3.5 Large",
    1536: "SD3 Medium or Wan 2.1 1.3B", 5120: "Wan 2.1 14B",
}

def refuse_other_models(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    keys = list(tensors)
    for pattern, model in _OTHER_MODELS:
        if model is None:  # text encoders, after SDXL's and before Wan's patterns (CLIP has `self_attn` too)
            _refuse_text_encoder(path, keys)
            continue
        hit = next((k for k in keys if re.search(pattern, k)), None)
        if hit is not None:
            raise UserError(f"{path}: a LoRA of {model} (key '{hit}'), not a Z-Image LoRA; use a LoRA trained for "
                            f"Z-Image")
    hit = next((k for k in keys if _DIFFUSERS_BLOCKS.search(k)), None)
    if hit is not None:  # diffusers `transformer_blocks.N`: Qwen-Image, Flux's double blocks or SD3, told by width
        width = next((t.shape[-1] for k, t in tensors.items() if t.ndim == 2 and _DIFFUSERS_BLOCKS.search(k)
                      and re.search(r"attn[._]to_[qkv][._]lora[._]?(A|down)", k)), None)
        flux_like = any(re.search(r"ff_context|norm1_context|(^|[._])ff[._]net", k) for k in keys)
        if width in (1536, 2432):
            model = "SD3"
        elif width == 3072:
            model = "Flux" if flux_like else "Qwen-Image"
        else:
            model = "Flux or SD3" if flux_like else "Qwen-Image, Flux or SD3"
        raise UserError(f"{path}: a LoRA of {model} (key '{hit}': diffusers transformer_blocks, width {width}), "
                        f"not a Z-Image LoRA; use a LoRA trained for Z-Image")


def _refuse_text_encoder(path: Path, keys: list[str]) -> None:
    text_encoder = next((k for k in keys if _TEXT_ENCODER.search(k)), None)
    if text_encoder is None:
        return
    if any((split := _split_role(k)) and _locate(split[0]) for k in keys):
        raise UserError(f"{path}: holds text-encoder LoRA weights too (key '{text_encoder}'), which zsearch "
                        f"cannot weight; save the Z-Image transformer part alone and give that file")
    raise UserError(f"{path}: its keys belong to a text encoder (e.g. '{text_encoder}'; zsearch weights the "
                    f"Z-Image transformer only), not a Z-Image LoRA")


def refuse_other_adapters(path: Path, keys: list[str]) -> None:
    for pattern, what in _NOT_LORA:
        hit = next((k for k in keys if re.search(pattern, k)), None)
        if hit is not None:
            raise UserError(f"{path}: {what}, not a LoRA (key '{hit}'); zsearch reads LoRA, LoKr and LoHa files")


def _split_role(key: str) -> tuple[str, str] | None:
    match = _ADAPTER_RE.match(key)
    if match:
        return match.group(1), "down" if match.group(2) == "A" else "up"
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _locate(name: str) -> tuple[str, str, str] | None:
    """(canonical module name, format, the name as its trainer wrote it without the prefix), or None."""
    for prefix, fmt in _PREFIXES:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        flat = _flat(rest)
        if flat in _OTHER_OF_FLAT:
            canonical = _OTHER_OF_FLAT[flat]
        else:
            match = _FLAT_BLOCK_RE.match(flat)
            if not match or match.group(3) not in _BLOCK_SUFFIX_OF_FLAT:
                return None
            canonical = f"{_BLOCK_OF_FLAT[match.group(1)]}.{match.group(2)}.{_BLOCK_SUFFIX_OF_FLAT[match.group(3)]}"
        if fmt == "kohya" and rest.startswith("_"):
            fmt = "videox-fun"
        elif "." in rest and any(token in rest for token in _MANGLED):
            fmt = "musubi-converted"  # dots where the module names have underscores
        return canonical, fmt, rest
    return None


def group_keys(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict], str]:
    """Group keys by the Z-Image Linear they adapt: {module name: {role: (key, tensor)}, "keys": [...]}."""
    groups: dict[str, dict] = {}
    formats: Counter = Counter()
    unknown = []
    for key, tensor in tensors.items():
        split = _split_role(key)
        located = _locate(split[0]) if split else None
        if located is None:
            unknown.append(key)
            continue
        name, fmt, written = located
        formats[fmt] += 1
        group = groups.setdefault(name, {"keys": [], "written": written})
        group["keys"].append(key)
        role = split[1]
        if role in group:
            raise UserError(f"{path}: keys '{group[role][0]}' and '{key}' both give the {role} of {name}; "
                            f"the file is inconsistent, re-export it")
        group[role] = (key, tensor)

    if not groups:
        raise UserError(f"{path}: {_describe_foreign(list(tensors))}, not a Z-Image LoRA; use a LoRA trained for "
                        f"Z-Image")
    if unknown:
        raise UserError(
            f"{path}: key '{unknown[0]}' is not a LoRA, LoKr or LoHa weight of a Z-Image Linear "
            f"({len(unknown)} such keys; {_describe_foreign(unknown)}); zsearch weights "
            f"{', '.join(COMPONENTS)} in layers/noise_refiner/context_refiner and the embedders and final layer")

    fmt = formats.most_common(1)[0][0]
    if any(name.endswith((FUSED_QKV, FUSED_OUT)) for name in groups):
        fmt = {"kohya": "kohya-fused", "ai-toolkit": "comfyui"}.get(fmt, f"{fmt}-fused")
    return groups, fmt


def _describe_foreign(keys: list[str]) -> str:
    hit = next((k for k in keys if _TEXT_ENCODER.search(k)), None)
    if hit is not None:
        return f"its keys belong to a text encoder (e.g. '{hit}'; zsearch weights the transformer only)"
    return f"no key names a Z-Image transformer module (e.g. '{keys[0]}')"
