"""The Z-Image transformer taxonomy: blocks, components and module paths.

Module paths are spelled exactly as diffusers' `transformer_z_image.py` names them,
so a user can follow a key from their LoRA file to the model code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Component name -> module path inside one transformer block.
COMPONENTS: dict[str, str] = {
    "adaLN": "adaLN_modulation.0",
    "to_q": "attention.to_q",
    "to_k": "attention.to_k",
    "to_v": "attention.to_v",
    "to_out": "attention.to_out.0",
    "w1": "feed_forward.w1",
    "w2": "feed_forward.w2",
    "w3": "feed_forward.w3",
}
COMPONENT_OF_SUFFIX = {suffix: name for name, suffix in COMPONENTS.items()}

# The Linears outside the 34 blocks that trainers also adapt (AI-Toolkit `transformer_only: false`,
# OneTrainer's default preset, ComfyUI's extract node), as diffusers names them, with the names
# ComfyUI's own checkpoint uses. Their weight is the LoRA's ratio x the one component `other`.
OTHER = "other"
OTHER_MODULES: dict[str, tuple[str, ...]] = {
    "t_embedder.mlp.0": (),  # 256 -> 1024
    "t_embedder.mlp.2": (),  # 1024 -> min(D, 256)
    "cap_embedder.1": (),  # caption features (2560) -> D
    "all_x_embedder.2-1": ("x_embedder",),  # patches (64) -> D
    "all_final_layer.2-1.linear": ("final_layer.linear",),  # D -> patches (64)
    "all_final_layer.2-1.adaLN_modulation.1": ("final_layer.adaLN_modulation.1",),  # min(D, 256) -> D
}

# Group aliases a recipe may use; a specific component name overrides its group. `other` is a
# group of its own: fixed at 1 unless a recipe names it, searched as one weight with `tie: [other]`.
GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("to_q", "to_k", "to_v", "to_out"),
    "qk": ("to_q", "to_k"),
    "ffn": ("w1", "w2", "w3"),
    OTHER: (OTHER,),
}

N_LAYERS = 30  # Z-Image-Turbo's main single-stream blocks
ZIMAGE_TURBO_DIM = 3840  # its transformer width D
REFINERS: dict[str, int] = {"noise_refiner": 2, "context_refiner": 2}
BLOCK_KINDS = ("layers", *REFINERS)
ADALN_EMBED_DIM = 256  # width of the timestep embedding that feeds adaLN

_MODULE_RE = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Module:
    """One LoRA-targetable Linear: which block, which index, which component."""

    block: str  # "layers", "noise_refiner", "context_refiner", or "other" (outside the blocks)
    index: int
    component: str  # a key of COMPONENTS, or "other"
    name: str = ""  # the module path of an `other` module (e.g. "t_embedder.mlp.0")

    @property
    def path(self) -> str:
        if self.block == OTHER:
            return self.name
        return f"{self.block}.{self.index}.{COMPONENTS[self.component]}"


def parse_module(path: str) -> Module | None:
    """`layers.3.attention.to_q` -> Module("layers", 3, "to_q"); `t_embedder.mlp.0` -> an `other`
    Module; None if not a Z-Image module."""
    if path in OTHER_MODULES:
        return Module(OTHER, 0, OTHER, path)
    match = _MODULE_RE.match(path)
    if not match:
        return None
    component = COMPONENT_OF_SUFFIX.get(match.group(3))
    if component is None:
        return None
    return Module(match.group(1), int(match.group(2)), component)


def all_modules(n_layers: int = N_LAYERS) -> list[Module]:
    """Every targetable module of a Z-Image transformer, in model order."""
    blocks = [("noise_refiner", REFINERS["noise_refiner"]), ("context_refiner", REFINERS["context_refiner"]),
              ("layers", n_layers)]
    return [
        Module(block, i, comp)
        for block, count in blocks
        for i in range(count)
        for comp in COMPONENTS
        if not (block == "context_refiner" and comp == "adaLN")  # context refiner has no adaLN
    ]


def ffn_hidden(dim: int) -> int:
    """Feed-forward width of a Z-Image transformer of width `dim` (10240 for 3840)."""
    return int(dim / 3 * 8)


def expected_shape(component: str, dim: int) -> tuple[int, int]:
    """(out_features, in_features) of a component's Linear in a transformer of width `dim`."""
    hidden = ffn_hidden(dim)
    return {
        "adaLN": (4 * dim, min(dim, ADALN_EMBED_DIM)),
        "to_q": (dim, dim),
        "to_k": (dim, dim),
        "to_v": (dim, dim),
        "to_out": (dim, dim),
        "w1": (hidden, dim),
        "w3": (hidden, dim),
        "w2": (dim, hidden),
    }[component]


def other_width_side(path: str, out_features: int, in_features: int) -> int | None:
    """The width D an `other` module's shape implies (the side that is D), None if neither is."""
    if path in ("cap_embedder.1", "all_x_embedder.2-1", "all_final_layer.2-1.adaLN_modulation.1"):
        return out_features
    if path == "all_final_layer.2-1.linear":
        return in_features
    return None  # t_embedder: 256 -> 1024 -> min(D, 256), says nothing about D above 256
