"""What a LoRA file holds: format, ranks, alpha, coverage and the size of its delta per band.

The Frobenius norm of dW = s B A is computed from r x r products only:
||B A||_F^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T)), so no out x in matrix is formed.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from zsearch.lora.blocks import COMPONENTS, OTHER, REFINERS, ZIMAGE_TURBO_DIM, parse_module
from zsearch.lora.model import AnyModule, Lora

LAYER_BANDS = ((0, 9), (10, 19), (20, 29))  # where a LoRA acts: early, middle, late layers
BANDS = (*REFINERS, *(f"{lo}-{hi}" for lo, hi in LAYER_BANDS))


def delta_norm(module: AnyModule) -> float:
    """||dW||_F: for a LoRA without forming B @ A (float32 Gram matrices: ~1e-6 relative); for a LoKr
    as ||w1|| ||w2|| (the norm of a Kronecker product); for a LoHa from its delta."""
    if module.kind == "lokr":
        w1, w2 = (module.w1 if module.w1 is not None else module.w1_a.float() @ module.w1_b.float(),
                  module.w2 if module.w2 is not None else module.w2_a.float() @ module.w2_b.float())
        return abs(module.scale) * float(w1.double().norm()) * float(w2.double().norm())
    if module.kind == "loha":
        return float(module.delta(torch.float32).double().norm())
    up, down = module.up.float(), module.down.float()
    gram = (up.T @ up) * (down @ down.T)
    return abs(module.scale) * math.sqrt(max(float(gram.double().sum()), 0.0))


def band_of(block: str, index: int) -> str:
    if block == OTHER:
        return OTHER
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
    ranks = Counter(m.rank for m in lora.modules.values() if m.rank is not None)
    alphas = Counter((m.kind, m.rank, m.scale) for m in lora.modules.values())
    coverage: dict[str, dict[str, list[int]]] = {c: {} for c in COMPONENTS}
    squares: dict[str, dict[str, float]] = {c: {} for c in (*COMPONENTS, OTHER)}
    counts: dict[str, dict[str, int]] = {c: {} for c in (*COMPONENTS, OTHER)}
    other: dict[str, dict] = {}
    for path, module in lora.modules.items():
        m = parse_module(path)
        if m.block == OTHER:
            other[path] = {"kind": module.kind, "rank": module.rank, "shape": list(module.shape),
                           "norm": delta_norm(module)}
            squares[OTHER][OTHER] = squares[OTHER].get(OTHER, 0.0) + other[path]["norm"] ** 2
            counts[OTHER][OTHER] = counts[OTHER].get(OTHER, 0) + 1
            continue
        coverage[m.component].setdefault(m.block, []).append(m.index)
        band = band_of(m.block, m.index)
        squares[m.component][band] = squares[m.component].get(band, 0.0) + delta_norm(module) ** 2
        counts[m.component][band] = counts[m.component].get(band, 0) + 1
    norms = {c: {b: math.sqrt(v) for b, v in bands.items()} for c, bands in squares.items() if bands}
    band_totals = {b: math.sqrt(sum(squares[c].get(b, 0.0) for c in COMPONENTS)) for b in BANDS}
    band_totals[OTHER] = math.sqrt(squares[OTHER].get(OTHER, 0.0))
    return {
        "path": str(lora.path),
        "format": lora.format,
        "scale_source": lora.scale_source,
        "dim": lora.dim,
        "modules": len(lora.modules),
        "ranks": {str(r): n for r, n in sorted(ranks.items())},
        "kinds": dict(Counter(m.kind for m in lora.modules.values())),
        # alpha as scale x rank: what the file's alpha works out to (a file with none reads as scale 1)
        "alpha": [{"kind": k, "rank": r, "alpha": s * r if r is not None else None, "scale": s, "modules": n}
                  for (k, r, s), n in sorted(alphas.items(), key=lambda item: (item[0][0], item[0][1] or 0, item[0][2]))],
        "other": other,
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
    if not lora.plain:
        notes.append("diffusers' Z-Image loader reads LoRA keys only (ComfyUI also loads LoKr/LoHa); "
                     "`zsearch merge FILE --ratio 1 --as-lora --rank N -o OUT.safetensors` writes it as a LoRA")
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
    ranks = ", ".join(f"{r} ({n} modules)" for r, n in info["ranks"].items()) or "-"
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(info["kinds"].items()))

    def alpha_text(a: dict) -> str:  # the JSON's numbers: alpha = scale x rank (no alpha saved: scale 1)
        kind = "" if a["kind"] == "lora" else f"{a['kind']} "
        if a["rank"] is None:
            return f"{kind}scale {a['scale']:g}"
        return f"{kind}{a['alpha']:g} at rank {a['rank']} (scale {a['scale']:g})"
    alphas = ", ".join(alpha_text(a) + f" x{a['modules']}" for a in info["alpha"])
    lines = [line for line in [
        info["path"],
        f"  format  {info['format']}    width {info['dim']} ({model})    {info['modules']} modules ({kinds})",
        f"  rank    {ranks}",
        f"  alpha   {alphas}",
        f"  scale   from {info['scale_source']}" if info.get("scale_source") else None,
        "",
        "  ||dW||_F per component and band (covered/total blocks where not all are covered)",
        "  " + f"{'':8}" + "".join(f"{b:>17}" for b in BANDS) + "   layers covered",
    ] if line is not None]
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
    if info["other"]:
        lines += ["", "  outside the blocks (component `other`)"]
        for path, entry in info["other"].items():
            rank = f"rank {entry['rank']}" if entry["rank"] is not None else "whole factors"
            lines.append(f"  {path:40} {entry['kind']:5} {rank:14} {entry['shape'][1]}->{entry['shape'][0]}"
                         f"   ||dW|| {entry['norm']:.4g}")
    lines += [f"  note: {n}" for n in info["notes"]]
    return "\n".join(lines)

