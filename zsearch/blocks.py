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

# Group aliases a recipe may use; a specific component name overrides its group.
GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("to_q", "to_k", "to_v", "to_out"),
    "qk": ("to_q", "to_k"),
    "ffn": ("w1", "w2", "w3"),
}

N_LAYERS = 30  # Z-Image-Turbo's main single-stream blocks
REFINERS: dict[str, int] = {"noise_refiner": 2, "context_refiner": 2}
BLOCK_KINDS = ("layers", *REFINERS)
ADALN_EMBED_DIM = 256  # width of the timestep embedding that feeds adaLN

_MODULE_RE = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Module:
    """One LoRA-targetable Linear: which block, which index, which component."""

    block: str  # "layers", "noise_refiner" or "context_refiner"
    index: int
    component: str  # a key of COMPONENTS

    @property
    def path(self) -> str:
        return f"{self.block}.{self.index}.{COMPONENTS[self.component]}"


def parse_module(path: str) -> Module | None:
    """`layers.3.attention.to_q` -> Module("layers", 3, "to_q"); None if not a Z-Image module."""
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
