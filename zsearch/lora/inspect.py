"""What a LoRA file holds: format, ranks, alpha, coverage and the size of its delta per band.

The Frobenius norm of dW = s B A is computed from r x r products only:
||B A||_F^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T)), so no out x in matrix is formed.
"""

from __future__ import annotations

import math
from collections import Counter


from ..blocks import COMPONENTS, REFINERS, parse_module
from .model import Lora, LoraModule

ZIMAGE_TURBO_DIM = 3840
LAYER_BANDS = ((0, 9), (10, 19), (20, 29))  # where a LoRA acts: early, middle, late layers
BANDS = (*REFINERS, *(f"{lo}-{hi}" for lo, hi in LAYER_BANDS))


def delta_norm(module: LoraModule) -> float:
    """||scale * B @ A||_F without forming B @ A (float32 Gram matrices: ~1e-6 relative)."""
    up, down = module.up.float(), module.down.float()
    gram = (up.T @ up) * (down @ down.T)
    return abs(module.scale) * math.sqrt(max(float(gram.double().sum()), 0.0))


def band_of(block: str, index: int) -> str:
    if block in REFINERS:
        return block
    return next(f"{lo}-{hi}" for lo, hi in LAYER_BANDS if lo <= index <= hi)


def _band_size(band: str) -> int:
    if band in REFINERS:
        return REFINERS[band]
    lo, hi = map(int, band.split("-"))
    return hi - lo + 1


def inspect_lora(lora: Lora) -> dict:
    """Plain data describing `lora` (JSON-ready)."""
    ranks = Counter(m.rank for m in lora.modules.values())
    alphas = Counter((m.rank, m.scale) for m in lora.modules.values())
    coverage: dict[str, dict[str, list[int]]] = {c: {} for c in COMPONENTS}
    squares: dict[str, dict[str, float]] = {c: {} for c in COMPONENTS}
    counts: dict[str, dict[str, int]] = {c: {} for c in COMPONENTS}
    for path, module in lora.modules.items():
        m = parse_module(path)
        coverage[m.component].setdefault(m.block, []).append(m.index)
        band = band_of(m.block, m.index)
        squares[m.component][band] = squares[m.component].get(band, 0.0) + delta_norm(module) ** 2
        counts[m.component][band] = counts[m.component].get(band, 0) + 1
    norms = {c: {b: math.sqrt(v) for b, v in bands.items()} for c, bands in squares.items() if bands}
    band_totals = {b: math.sqrt(sum(squares[c].get(b, 0.0) for c in COMPONENTS)) for b in BANDS}
    return {
        "path": str(lora.path),
        "format": lora.format,
        "dim": lora.dim,
        "modules": len(lora.modules),
        "ranks": {str(r): n for r, n in sorted(ranks.items())},
        "alpha": [{"rank": r, "alpha": s * r, "scale": s, "modules": n} for (r, s), n in sorted(alphas.items())],
        "coverage": {c: {b: sorted(i) for b, i in blocks.items()} for c, blocks in coverage.items() if blocks},
        "norms": norms,
        "modules_per_band": {c: bands for c, bands in counts.items() if bands},
        "band_norms": band_totals,
        "total_norm": math.sqrt(sum(v for bands in squares.values() for v in bands.values())),
        "notes": _notes(lora),
    }


def _notes(lora: Lora) -> list[str]:
    notes = []
    if lora.dim != ZIMAGE_TURBO_DIM:
        notes.append(f"width {lora.dim} is not Z-Image-Turbo's {ZIMAGE_TURBO_DIM} (a test LoRA, or another model)")
    if lora.format.startswith("kohya"):
        notes.append("ComfyUI drops kohya-named attention keys; `zsearch merge FILE --ratio 1 -o OUT.safetensors` "
                     "rewrites it in the AI-Toolkit form that ComfyUI and diffusers load")
    return notes


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def format_report(info: dict) -> str:
    """A human-readable table of `inspect_lora`'s data."""
    model = "Z-Image-Turbo" if info["dim"] == ZIMAGE_TURBO_DIM else "not Z-Image-Turbo"
    ranks = ", ".join(f"{r} ({n} modules)" for r, n in info["ranks"].items())
    alphas = ", ".join(
        ("none (scale 1)" if a["scale"] == 1.0 else f"{a['alpha']:g} at rank {a['rank']} (scale {a['scale']:g})")
        + f" x{a['modules']}" for a in info["alpha"])
    lines = [
        info["path"],
        f"  format  {info['format']}    width {info['dim']} ({model})    {info['modules']} modules",
        f"  rank    {ranks}",
        f"  alpha   {alphas}",
        "",
        "  ||dW||_F per component and band (covered/total blocks where not all are covered)",
        "  " + f"{'':8}" + "".join(f"{b:>17}" for b in BANDS) + "   layers covered",
    ]
    for component in COMPONENTS:
        norms = info["norms"].get(component, {})
        counts = info["modules_per_band"].get(component, {})
        cells = []
        for band in BANDS:
            total = _band_size(band)
            if component == "adaLN" and band == "context_refiner":
                cells.append(f"{'n/a':>17}")
            elif band not in norms:
                cells.append(f"{'-':>17}")
            else:
                partial = "" if counts[band] == total else f" ({counts[band]}/{total})"
                cells.append(f"{norms[band]:.4g}{partial}".rjust(17))
        covered = info["coverage"].get(component, {}).get("layers")
        lines.append(f"  {component:8}" + "".join(cells) + f"   {ranges(covered) if covered else '-'}")
    lines.append(f"  {'all':8}" + "".join(f"{info['band_norms'].get(b, 0.0):>17.4g}" for b in BANDS)
                 + f"   total {info['total_norm']:.4g}")
    lines += [f"  note: {n}" for n in info["notes"]]
    return "\n".join(lines)

