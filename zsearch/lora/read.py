"""Read a LoRA file of any known Z-Image layout into the canonical `Lora`.

Every trainer names the same Linears differently: keys.py maps each key to a diffusers module
path (`layers.0.attention.to_q`, `t_embedder.mlp.0`) and refuses files of other models and
adapters that are not LoRA/LoKr/LoHa. This module reads the file, folds alpha into a scale with
the trainer's own rule, splits fused `qkv`, infers the transformer width D from the shapes and
checks every shape against it. Every problem is a one-line UserError that names the file.

    source           key example                                               scale
    AI-Toolkit       diffusion_model.layers.0.attention.to_q.lora_A.weight     1
    diffusers/PEFT   transformer.layers.0.attention.to_q.lora_A.weight         .alpha, or the adapter config
    PEFT folder      base_model.model.layers.0.attention.to_q.lora_A.weight    adapter_config.json
    kohya/musubi     lora_unet_layers_0_attention_to_q.lora_down.weight        alpha / rank
    fused (ComfyUI)  …attention.qkv… (A shared, B = [q; k; v]), …attention.out…
    DiffSynth        layers.0.attention.to_q.lora_A.default.weight             1
    LyCORIS          lycoris_layers_0_attention_to_q.lokr_w1 / .hada_w1_a      LyCORIS' rules (model.py)

The tensors are safetensors' zero-copy views of the memory-mapped file (fp8 ones are cast up
to bfloat16, exactly): they stay mapped while any module of the file is alive.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open

from zsearch.lora.blocks import (COMPONENTS, N_LAYERS, OTHER, OTHER_MODULES, REFINERS, ZIMAGE_TURBO_DIM, expected_shape,
                      other_width_side, parse_module)
from zsearch.errors import UserError
from zsearch.lora.keys import FUSED_OUT, FUSED_QKV, OTHER_MODEL_WIDTHS, group_keys, refuse_other_adapters, refuse_other_models
from zsearch.lora.model import AnyModule, Lora, LohaModule, LokrModule, LoraModule

_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))


def load_lora(path: str | os.PathLike) -> Lora:
    """Read one LoRA file (or PEFT folder); every problem is a UserError naming the file and the fix."""
    path = Path(path)
    tensors, metadata, config, fmt_hint = _read_source(path)
    refuse_other_models(path, tensors)
    refuse_other_adapters(path, list(tensors))
    groups, fmt = group_keys(path, tensors)
    config.require(groups)
    modules = _build_modules(path, groups, config)
    if not modules:
        raise UserError(f"{path}: every weight in it is zero; it changes nothing (re-export it)")
    dim = _infer_dim(modules)
    if dim in OTHER_MODEL_WIDTHS and dim != ZIMAGE_TURBO_DIM:
        model = OTHER_MODEL_WIDTHS[dim]
        raise UserError(f"{path}: its modules are {dim} wide, the width of {model} (Z-Image-Turbo is "
                        f"{ZIMAGE_TURBO_DIM}); this is a {model} LoRA, not a Z-Image one")
    _check_shapes(path, modules, dim)
    ordered = {p: modules[p] for p in sorted(modules, key=model_order)}
    return Lora(path=path, format=fmt_hint or fmt, dim=dim, modules=ordered, metadata=metadata,
                scale_source=_scale_source(groups, config))


def load_loras(paths: Iterable[str | os.PathLike]) -> list[Lora]:
    """Read several LoRAs that will be used together: they must share the width D."""
    loras = [load_lora(p) for p in paths]
    for lora in loras[1:]:
        if lora.dim != loras[0].dim:
            raise UserError(
                f"{lora.path}: made for a transformer of width {lora.dim}, but {loras[0].path} is for width "
                f"{loras[0].dim}; LoRAs of different models cannot be combined")
    return loras


# -- reading the file ----------------------------------------------------------------------------
PEFT_WEIGHTS = "adapter_model.safetensors"  # what PEFT's save_pretrained writes, beside PEFT_CONFIG
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights
METADATA_CONFIG = "lora_adapter_metadata"  # where save_lora_weights keeps the PEFT config
PEFT_KEY_PREFIX = "base_model.model."


@dataclass
class AdapterConfig:
    """The PEFT config that holds a file's scale outside its tensors (r, lora_alpha, patterns,
    use_rslora), and where it was read: adapter_config.json beside the weights (a PEFT folder, or
    its file given alone) or the safetensors metadata. `missing` names the config file that a
    file with PEFT keys needs and lacks; `require` refuses such a file once its keys are known."""

    values: dict = field(default_factory=dict)
    source: str | None = None
    missing: Path | None = None
    weights: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.values)

    def require(self, groups: dict[str, dict]) -> None:
        if self.missing is None or self.values:
            return
        if all("alpha" in group for group in groups.values()):
            return  # every module carries its own alpha: nothing is read from a config
        raise UserError(f"{self.missing}: missing; {self.weights.name} is a PEFT adapter (keys {PEFT_KEY_PREFIX}*) "
                        f"whose scale (lora_alpha / r) is kept in the {PEFT_CONFIG} that save_pretrained writes "
                        f"beside it; put that file next to it")


def lora_files(path: str | os.PathLike) -> list[Path]:
    """The files a LoRA is read from: its weights, then the adapter_config.json beside them when
    that holds a PEFT file's scale (as load_lora finds it). What identifies the LoRA by content."""
    path = Path(path)
    weights = _weights_file(path) if path.is_dir() else path
    beside = weights.parent / PEFT_CONFIG
    if beside.is_file() and (weights.name == PEFT_WEIGHTS or _has_peft_keys(weights)):
        return [weights, beside]
    return [weights]


def _has_peft_keys(weights: Path) -> bool:
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return any(key.startswith(PEFT_KEY_PREFIX) for key in f.keys())
    except Exception:  # noqa: BLE001 - unreadable: load_lora says why, this only names files
        return False


def _read_source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], AdapterConfig, str | None]:
    """(tensors, metadata, the PEFT config (empty if none), format name if the layout fixes it).

    A folder and its weights file given alone read the same: the config is found beside the weights."""
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    folder_given = path.is_dir()
    weights = _weights_file(path) if folder_given else path
    tensors, metadata = _read_safetensors(weights)
    config = _find_config(weights, tensors, metadata, folder_given)
    peft = weights.name == PEFT_WEIGHTS and config.source is not None and config.source.endswith(PEFT_CONFIG)
    return tensors, metadata, config, "peft" if peft else None


def _weights_file(folder: Path) -> Path:
    for name in (PEFT_WEIGHTS, DIFFUSERS_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder}: is a folder without {PEFT_WEIGHTS}; give a .safetensors LoRA file "
                    f"or a PEFT save_pretrained folder")


def _find_config(weights: Path, tensors: dict, metadata: dict[str, str], folder_given: bool) -> AdapterConfig:
    """adapter_config.json beside a PEFT weights file, else the config in the metadata, else none.

    The JSON beside the file counts only for PEFT's own files (its keys or its file name): a
    loras/ folder may hold an unrelated adapter's config next to other files."""
    beside = weights.parent / PEFT_CONFIG
    peft_keys = any(key.startswith(PEFT_KEY_PREFIX) for key in tensors)
    peft_file = peft_keys or weights.name == PEFT_WEIGHTS
    if peft_file and beside.is_file():
        return AdapterConfig(_read_adapter_config(beside), str(beside))
    embedded = _metadata_config(weights, metadata)
    if embedded:
        return AdapterConfig(embedded, f"{weights.name}'s metadata ({METADATA_CONFIG})")
    if peft_keys or (folder_given and weights.name == PEFT_WEIGHTS):
        return AdapterConfig(missing=beside, weights=weights)
    return AdapterConfig()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def _read_adapter_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc.__class__.__name__}); re-save the adapter") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a PEFT adapter config (a JSON object with r and lora_alpha)")
    return config


def _metadata_config(weights: Path, metadata: dict[str, str]) -> dict:
    """The PEFT config diffusers' `save_lora_weights` keeps in the metadata (`lora_adapter_metadata`);
    one that cannot be read is refused: guessing would scale every module wrongly."""
    raw = metadata.get(METADATA_CONFIG)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{weights}: its metadata '{METADATA_CONFIG}' is not a JSON object, so the LoRA's scale "
                        f"(lora_alpha / r) is unknown; re-save it with diffusers' save_lora_weights")
    return {k.removeprefix("transformer."): v for k, v in config.items()}


def _scale_source(groups: dict[str, dict], config: AdapterConfig) -> str:
    """Where the modules' scale came from, in words (shown by `zsearch inspect`)."""
    alphas = sum("alpha" in group for group in groups.values())
    if config:
        values = config.values
        parts = [f"{k} {values[k]}" for k in ("r", "lora_alpha", "alpha") if k in values]
        parts += [k for k in ("rank_pattern", "alpha_pattern") if values.get(k)]
        parts += ["use_rslora"] if values.get("use_rslora") else []
        text = f"{config.source} ({', '.join(parts)})" if parts else config.source
        return text if alphas == 0 else f"{text}; .alpha tensors in the file for {alphas} modules"
    if alphas:
        return f".alpha tensors in the file ({alphas} of {len(groups)} modules)"
    return "no alpha saved in the file (scale 1, as its trainer applies it)"


def _cast_up(tensor: torch.Tensor) -> torch.Tensor:
    # fp8 values are all exact in bfloat16 (more exponent range, more mantissa), and most CPU
    # reductions (the finite check, norms) are not implemented for fp8
    return tensor.to(torch.bfloat16) if tensor.dtype in _FP8 else tensor


# -- building the modules ------------------------------------------------------------------------
PEFT_DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha and LoKr/LoHa's alpha when a config leaves it out


def _peft_rank_alpha(config: AdapterConfig, name: str, default_rank: int) -> tuple[int, float]:
    """(r, lora_alpha) PEFT uses for module `name`; rank_pattern/alpha_pattern keys are regexes,
    matched as PEFT's get_pattern_key does: `re.match(rf"(.*\\.)?({key})$", name)`, first match wins.
    A value that is not a number (a hand-edited config) is refused, naming the config and the key."""
    values = config.values
    def pick(patterns: dict, fallback):
        if patterns and not isinstance(patterns, dict):
            raise UserError(f"{config.source}: rank_pattern/alpha_pattern must map module names to numbers, got "
                            f"{patterns!r}; fix it or re-save the adapter")
        for key, value in (patterns or {}).items():
            try:
                if re.match(rf"(.*\.)?({key})$", name):
                    return value
            except re.error:
                if name == key or name.endswith("." + key):
                    return value
        return fallback
    rank = pick(values.get("rank_pattern"), values.get("r", default_rank))
    alpha = pick(values.get("alpha_pattern"), values.get("lora_alpha", values.get("alpha", PEFT_DEFAULT_ALPHA)))
    rank = default_rank if rank in (None, 0) else rank
    alpha = PEFT_DEFAULT_ALPHA if alpha is None else alpha
    numbers = []
    for key, value in (("r", rank), ("lora_alpha", alpha)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (key == "r" and (number < 1 or number != int(number))):
            raise UserError(f"{config.source}: {key} {value!r} (for {name}) is not a "
                            f"{'positive whole number' if key == 'r' else 'finite number'}; "
                            f"fix it or re-save the adapter")
        numbers.append(number)
    return int(numbers[0]), numbers[1]


def _tensor(path: Path, group: dict, role: str) -> torch.Tensor | None:
    if role not in group:
        return None
    key, tensor = group[role]
    tensor = _cast_up(tensor)
    if tensor.ndim != 2:
        raise UserError(f"{path}: '{key}' has shape {list(tensor.shape)}; a Z-Image LoRA weight is a "
                        f"2-D matrix (this looks like a convolution LoRA)")
    if not tensor.is_floating_point():
        raise UserError(f"{path}: '{key}' holds {tensor.dtype} values; a LoRA weight is floating point")
    if not _all_finite(tensor):
        raise UserError(f"{path}: '{key}' contains NaN or Inf values; the LoRA is corrupt (re-train or re-export it)")
    return tensor


def _alpha(path: Path, group: dict) -> float | None:
    if "alpha" not in group:
        return None
    key, tensor = group["alpha"]
    value = float(_cast_up(tensor).float().reshape(-1)[0]) if tensor.numel() == 1 else float("nan")
    if not math.isfinite(value):
        raise UserError(f"{path}: '{key}' must be one finite number")
    return value


def _build_modules(path: Path, groups: dict[str, dict], config: AdapterConfig) -> dict[str, AnyModule]:
    modules: dict[str, AnyModule] = {}
    for name, group in groups.items():
        roles = {r for r in group if r not in ("keys", "written", "alpha")}
        kinds = {"lokr" if r.startswith("lokr_") else "loha" if r.startswith("hada_") else "lora" for r in roles}
        if not kinds:
            raise _missing(path, name, group, "LoRA/LoKr/LoHa")
        if len(kinds) != 1:
            raise UserError(f"{path}: {name} mixes {' and '.join(sorted(kinds))} weights ({group['keys'][0]}, ...); "
                            f"the file is inconsistent, re-export it")
        kind = kinds.pop()
        build = {"lora": _lora_module, "lokr": _lokr_module, "loha": _loha_module}[kind]
        module = build(path, name, group, config)
        for part_name, part in _split_fused(path, name, module, group):
            _add(path, modules, part_name, part, name)
    return modules


def _missing(path: Path, name: str, group: dict, what: str) -> UserError:
    return UserError(f"{path}: {name} has no {what} weight (found only '{group['keys'][0]}'); the file is "
                     f"incomplete, re-export it")


def _lora_module(path: Path, name: str, group: dict, config: AdapterConfig) -> LoraModule:
    down, up = _tensor(path, group, "down"), _tensor(path, group, "up")
    if down is None or up is None:
        raise _missing(path, name, group, "up (lora_B / lora_up)" if up is None else "down (lora_A / lora_down)")
    if down.shape[0] != up.shape[1]:
        raise UserError(f"{path}: {name}: '{group['down'][0]}' has rank {down.shape[0]} but '{group['up'][0]}' has "
                        f"rank {up.shape[1]}; the two halves of the LoRA disagree")
    rank = down.shape[0]
    alpha = _alpha(path, group)
    if alpha is not None:
        scale = alpha / rank  # kohya, LyCORIS, OneTrainer, diffusers' converter: alpha / rank
    elif config:
        r, peft_alpha = _peft_rank_alpha(config, group["written"], rank)
        if r != rank:  # PEFT itself refuses to load these tensors with this config
            raise UserError(f"{path}: {name} has rank {rank} but {config.source} says r {r}; that config is not "
                            f"this adapter's (keep the {PEFT_CONFIG} saved with it)")
        scale = peft_alpha / (math.sqrt(r) if config.values.get("use_rslora") else r)
    else:
        scale = 1.0  # AI-Toolkit, DiffSynth: no alpha saved, none applied
    return LoraModule(down, up, scale)


def _lycoris_scale(alpha: float | None, dim: int | None) -> float:
    """LyCORIS: alpha missing or 0 means alpha = dim; scale = alpha / dim (1 when dim is unknown)."""
    if dim is None:
        return 1.0
    return (dim if not alpha else alpha) / dim


def _peft_lycoris_scale(path, name, group, config: AdapterConfig, dim) -> float:
    alpha = _alpha(path, group)
    if alpha is None and config:
        r, peft_alpha = _peft_rank_alpha(config, group["written"], dim or 1)
        return peft_alpha / r  # PEFT's LoKr/LoHa: alpha / r
    return _lycoris_scale(alpha, dim)


def _lokr_module(path: Path, name: str, group: dict, config: AdapterConfig) -> LokrModule:
    t = {n: _tensor(path, group, f"lokr_{n}") for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")}
    for which in ("w1", "w2"):
        whole, a, b = t[which], t[f"{which}_a"], t[f"{which}_b"]
        if whole is None and (a is None or b is None):
            raise _missing(path, name, group, f"lokr_{which} (or lokr_{which}_a and lokr_{which}_b)")
        if whole is None and a.shape[1] != b.shape[0]:
            raise UserError(f"{path}: {name}: lokr_{which}_a is {list(a.shape)} but lokr_{which}_b is "
                            f"{list(b.shape)}; their inner sizes disagree")
        if whole is not None:
            t[f"{which}_a"] = t[f"{which}_b"] = None  # LyCORIS uses the whole factor when both are saved
    module = LokrModule(**t)
    if config and str(config.values.get("peft_type", "")).upper() == "LOKR" and "alpha" not in group:
        module.scale = _peft_lycoris_scale(path, name, group, config, module.rank)
    elif module.rank is None:
        module.scale = 1.0  # both factors whole: LyCORIS and musubi use scale 1 whatever alpha says
    else:
        module.scale = _lycoris_scale(_alpha(path, group), module.rank)
    return module


def _loha_module(path: Path, name: str, group: dict, config: AdapterConfig) -> LohaModule:
    t = {n: _tensor(path, group, f"hada_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b")}
    absent = [n for n, v in t.items() if v is None]
    if absent:
        raise _missing(path, name, group, f"hada_{absent[0]}")
    if t["w1_a"].shape[1] != t["w1_b"].shape[0] or t["w2_a"].shape[1] != t["w2_b"].shape[0] or \
            t["w1_a"].shape[0] != t["w2_a"].shape[0] or t["w1_b"].shape[1] != t["w2_b"].shape[1]:
        raise UserError(f"{path}: {name}: the LoHa factors' shapes disagree "
                        f"({', '.join(f'hada_{n} {list(v.shape)}' for n, v in t.items())})")
    module = LohaModule(**t)
    if config and str(config.values.get("peft_type", "")).upper() == "LOHA" and "alpha" not in group:
        module.scale = _peft_lycoris_scale(path, name, group, config, module.rank)
    else:
        module.scale = _lycoris_scale(_alpha(path, group), module.rank)
    return module


def _nonzero_columns(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.abs().amax(dim=0) != 0


def _trim(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """a @ b with a's all-zero columns (and b's matching rows) left out: exact; None if a @ b is 0."""
    keep = _nonzero_columns(a)
    if not bool(keep.any()):
        return None
    if bool(keep.all()):
        return a, b
    return a[:, keep].contiguous(), b[keep].contiguous()


def _split_fused(path: Path, name: str, module: AnyModule, group: dict) -> list[tuple[str, AnyModule]]:
    """A fused `attention.qkv` module as its q, k, v parts; any other module as itself.

    Each part keeps only the rank it uses: musubi's ComfyUI converter writes a block-diagonal B
    (q's rows use only q's columns), so a part of a fused rank-3r LoRA has rank r again. Leaving
    out columns of B that are all zero is exact whatever the layout.
    """
    suffix = name.split(".", 2)[-1]  # `attention.qkv` of `layers.3.attention.qkv`
    if suffix == FUSED_OUT:
        return [(name.replace(FUSED_OUT, COMPONENTS["to_out"]), module)]
    if suffix != FUSED_QKV:
        return [(name, module)]
    rows = module.shape[0]
    if rows % 3:
        raise UserError(f"{path}: fused '{group['keys'][0]}' has {rows} output rows, not 3 equal parts (q, k, v)")
    parts = []
    for index, component in enumerate(("to_q", "to_k", "to_v")):
        part = _fused_part(path, module, index, group)
        if part is not None:
            parts.append((name.replace(FUSED_QKV, COMPONENTS[component]), part))
    return parts


def _fused_part(path: Path, module: AnyModule, index: int, group: dict) -> AnyModule | None:
    if module.kind == "lora":
        trimmed = _trim(module.up.chunk(3, dim=0)[index], module.down)
        return None if trimmed is None else LoraModule(trimmed[1], trimmed[0], module.scale)
    if module.kind == "loha":
        one = _trim(module.w1_a.chunk(3, dim=0)[index], module.w1_b)
        two = _trim(module.w2_a.chunk(3, dim=0)[index], module.w2_b)
        if one is None or two is None:
            return None
        return LohaModule(one[0], one[1], two[0], two[1], module.scale)
    # LoKr: rows of kron(w1, w2) in thirds are kron(w1's rows in thirds, w2) when w1's rows split in 3
    if module.factor_shape(1)[0] % 3 == 0:
        if module.w1 is not None:
            return LokrModule(w1=module.w1.chunk(3, dim=0)[index].contiguous(), w2=module.w2, w2_a=module.w2_a,
                              w2_b=module.w2_b, scale=module.scale)
        return LokrModule(w1_a=module.w1_a.chunk(3, dim=0)[index].contiguous(), w1_b=module.w1_b, w2=module.w2,
                          w2_a=module.w2_a, w2_b=module.w2_b, scale=module.scale)
    # otherwise a third of the rows is no Kronecker product: its delta as an exact-rank LoRA (float64 SVD)
    part = module.delta(torch.float64).chunk(3, dim=0)[index]
    u, s, vh = torch.linalg.svd(part, full_matrices=False)
    keep = int((s > s.max() * 1e-12).sum()) if s.numel() and float(s.max()) > 0 else 0
    if keep == 0:
        return None
    root = s[:keep].sqrt()
    return LoraModule((root[:, None] * vh[:keep]).float(), (u[:, :keep] * root).float(), 1.0)


def _all_finite(tensor: torch.Tensor) -> bool:
    # max |x| is NaN or Inf exactly when some element is; one reduction, no bool tensor, and far
    # faster than torch.isfinite on bf16 CPU tensors
    return tensor.numel() == 0 or bool(torch.isfinite(tensor.abs().amax()))


def _add(path: Path, modules: dict[str, AnyModule], module_path: str, module: AnyModule, source: str) -> None:
    parsed = parse_module(module_path)
    if parsed.block != OTHER:
        count = REFINERS.get(parsed.block, N_LAYERS)
        if parsed.index >= count:
            raise UserError(f"{path}: {source} is outside Z-Image ({parsed.block} has {count} blocks, 0-{count - 1})")
        if parsed.block == "context_refiner" and parsed.component == "adaLN":
            raise UserError(f"{path}: {source}: context_refiner blocks have no adaLN in Z-Image; not a Z-Image LoRA")
    if module_path in modules:
        raise UserError(f"{path}: {module_path} is given twice (as {source} and under another name, e.g. fused "
                        f"qkv next to to_q/to_k/to_v); keep one form")
    modules[module_path] = module


# -- widths --------------------------------------------------------------------------------------
def _implied_width(module_path: str, shape: tuple[int, int]) -> int | None:
    """The width D this module's shape implies (None for modules whose shape does not say)."""
    module = parse_module(module_path)
    out_features, in_features = shape
    if module.block == OTHER:
        return other_width_side(module_path, out_features, in_features)
    if module.component == "adaLN":
        return out_features // 4
    if module.component == "w2":
        return out_features
    return in_features


def _infer_dim(modules: dict[str, AnyModule]) -> int:
    """The width most modules imply; _check_shapes then names any module that disagrees."""
    votes = Counter(w for p, m in modules.items() if (w := _implied_width(p, m.shape)) is not None)
    if votes:
        return votes.most_common(1)[0][0]
    small = [m.shape[0] for p, m in modules.items() if p == "t_embedder.mlp.2"]
    return small[0] if small and small[0] < 256 else ZIMAGE_TURBO_DIM


def _expected_other_shape(module_path: str, dim: int, shape: tuple[int, int]) -> tuple[int, int]:
    """(out, in) of a module outside the blocks; sides that do not depend on D are taken as given."""
    out_features, in_features = shape
    return {
        "t_embedder.mlp.0": (1024, 256),
        "t_embedder.mlp.2": (min(dim, 256), 1024),
        "cap_embedder.1": (dim, in_features),
        "all_x_embedder.2-1": (dim, in_features),
        "all_final_layer.2-1.linear": (out_features, dim),
        "all_final_layer.2-1.adaLN_modulation.1": (dim, min(dim, 256)),
    }[module_path]


def _check_shapes(path: Path, modules: dict[str, AnyModule], dim: int) -> None:
    for module_path, module in modules.items():
        parsed = parse_module(module_path)
        if parsed.block == OTHER:
            want = _expected_other_shape(module_path, dim, module.shape)
        else:
            want = expected_shape(parsed.component, dim)
        got = tuple(module.shape)
        if got != tuple(want):
            raise UserError(
                f"{path}: {module_path} maps {got[1]}->{got[0]} features but a Z-Image transformer of width {dim} "
                f"(inferred from the other modules) has {want[1]}->{want[0]}; the file is not a Z-Image "
                f"LoRA or is damaged")


def model_order(module_path: str) -> tuple:
    """Sort key: the embedders, refiners, then layers (each block's components in COMPONENTS order),
    then the final layer: the order of the model's forward pass."""
    module = parse_module(module_path)
    if module.block == OTHER:
        names = list(OTHER_MODULES)
        final = module_path.startswith("all_final_layer")
        return (3 if final else -1), names.index(module_path), 0
    order = {"noise_refiner": 0, "context_refiner": 1, "layers": 2}
    return order[module.block], module.index, list(COMPONENTS).index(module.component)
