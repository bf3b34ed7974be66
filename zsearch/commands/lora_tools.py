"""Sub-commands on LoRA files: `inspect` and `merge` (the hand tool).

`zsearch merge A B --ratio R ...` builds a recipe from its flags and goes through the very same
path as `zsearch merge --recipe recipe.yaml`; the recipe used is written into the output.
"""

from __future__ import annotations

import json
from pathlib import Path

from zsearch.commands.arguments import input_path
from zsearch.lora.blocks import COMPONENTS, GROUPS, OTHER
from zsearch.errors import UserError
from zsearch.lora.recipe import Recipe, load_recipe, parse_recipe

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
WEIGHT_FLAGS = (*COMPONENTS, *GROUPS)  # --adaLN --to_q ... --w3, and the groups --attn --qk --ffn


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show format, ranks, alpha, coverage and delta norms of LoRA files",
                       description="Show what LoRA files hold: format, ranks, alpha, where they act and how strongly; "
                                   "for a zsearch output also how it was found (recipe, scores, chosen by, sources).")
    p.add_argument("files", nargs="+", type=input_path, metavar="FILE",
                   help="LoRA .safetensors files, or PEFT/diffusers adapter folders")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "merge", help="merge LoRAs with a ratio per LoRA and block weights into one LoRA",
        description="Scale of module m of LoRA i = ratio_i x component weight x layer weight; the LoRAs are "
                    "then summed. Exact by default (ranks concatenated); --rank N re-compresses by SVD.")
    p.add_argument("loras", nargs="*", type=input_path, metavar="LORA", help="input .safetensors LoRAs")
    p.add_argument("--recipe", type=input_path, help="per-LoRA weights from a recipe YAML (instead of LoRAs and flags)")
    p.add_argument("--ratio", type=float, action="append", metavar="R",
                   help="required with LoRA files: once per LoRA, or once for all")
    weights = p.add_argument_group("block weights (multiply every LoRA's ratio; default 1.0)")
    for name in WEIGHT_FLAGS:
        group_of = f" (group: {', '.join(GROUPS[name])})" if name in GROUPS and name != OTHER else ""
        if name == OTHER:
            group_of = " (the modules outside the blocks: t_embedder, cap_embedder, x_embedder, final_layer)"
        weights.add_argument(f"--{name}", type=float, dest=f"weight_{name}", metavar="X",
                             help=f"weight of {name}{group_of}")
    weights.add_argument("--layers", metavar="SPEC",
                         help='layer weights, e.g. "0-9=0.5,10-29=1.2,noise_refiner=1.0"')
    p.add_argument("--rank", type=int, metavar="N", help="re-compress each module to rank N (reports the error)")
    p.add_argument("--as-lora", action="store_true",
                   help="write LoKr/LoHa modules as LoRA too (randomized SVD at --rank, default 64, error "
                        "reported): diffusers loads LoRA keys only; by default a lone LoKr/LoHa keeps its kind")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="output dtype (default: the inputs')")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="replace an existing output (never an input)")
    p.set_defaults(func=cmd_merge)


def cmd_inspect(args) -> int:
    from zsearch.lora.inspect import format_report, inspect_lora
    from zsearch.lora.read import load_lora
    from zsearch.outputs.provenance import how_to_load, provenance_lines, read_provenance
    infos = []
    for path in args.files:
        lora = load_lora(path)
        info = inspect_lora(lora)
        info["provenance"] = read_provenance(lora.metadata)  # how zsearch made it; None for other files
        infos.append(info)
    if args.json:
        print(json.dumps({"files": infos}, indent=2))
        return 0
    texts = []
    for info in infos:
        text = format_report(info)
        if info["provenance"] is not None:
            text += "\n" + "\n".join([*provenance_lines(info["provenance"]),
                                       *(f"  {line}" for line in how_to_load(info["path"]))])
        texts.append(text)
    print("\n\n".join(texts))
    return 0


def cmd_merge(args) -> int:
    import torch

    from zsearch.lora.merge import merge_to_file
    from zsearch.lora.read import load_loras
    from zsearch.lora.write import check_output, merge_metadata

    recipe = recipe_from_args(args)
    if args.rank is not None and args.rank < 1:
        raise UserError(f"--rank {args.rank}: the rank must be a positive whole number such as 32")
    inputs = [lw.path for lw in recipe.loras]
    check_output(args.output, inputs, args.force)  # fail before the work, not after
    loras = load_loras(inputs)
    scales = [lw.module_scales(lora.modules) for lw, lora in zip(recipe.loras, loras)]
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    provenance = merge_metadata(recipe, args.output)  # hashes the inputs: once, not per call below

    def metadata(report) -> dict[str, str]:
        return {**provenance, **report.metadata()}

    # streamed: each module is written as it is merged, so the output is never whole in memory
    report = merge_to_file(loras, scales, args.output, metadata, rank=args.rank, dtype=dtype,
                           force=args.force, inputs=inputs, as_lora=args.as_lora)
    out = Path(args.output)
    size_mb = out.stat().st_size / 2 ** 20
    print(f"wrote {out} ({size_mb:.1f} MiB): {len(recipe.loras)} LoRA(s), {report.summary()}")
    for path in report.mixed:
        print(f"  {path}: LoKr/LoHa delta as a rank-{report.ranks[path]} LoRA, relative error {report.errors[path]:.3g}")
    return 0


def recipe_from_args(args) -> Recipe:
    """--recipe, or a recipe built from the LoRA files, --ratio, block weights and --layers."""
    weights = {name: getattr(args, f"weight_{name}") for name in WEIGHT_FLAGS
               if getattr(args, f"weight_{name}") is not None}
    if args.recipe is not None:
        if args.loras or args.ratio or weights or args.layers:
            raise UserError("--recipe holds the LoRAs and their weights; give either --recipe or LoRA files with "
                            "--ratio and block weights, not both")
        return load_recipe(args.recipe)
    if not args.loras:
        raise UserError("no LoRA given; name .safetensors files (with --ratio) or use --recipe recipe.yaml")
    ratios = args.ratio or []
    if len(ratios) == 1:
        ratios = ratios * len(args.loras)
    if len(ratios) != len(args.loras):
        raise UserError(f"--ratio is required once per LoRA ({len(args.loras)} given) or once for all; "
                        f"got {len(args.ratio or [])}")
    layers = parse_layers_flag(args.layers) if args.layers else {}
    data = {"loras": [{"path": str(path.resolve()), "ratio": ratio, "components": weights, "layers": layers}
                      for path, ratio in zip(args.loras, ratios)]}
    return parse_recipe(data, "merge options", Path.cwd())


def parse_layers_flag(spec: str) -> dict[str, float]:
    """'0-9=0.5,10-29=1.2,noise_refiner=1' -> {'0-9': 0.5, ...}; ranges are checked by the recipe."""
    layers: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not key.strip() or weight is None:
            raise UserError(f"--layers: '{item}' is not RANGE=WEIGHT; write e.g. \"0-9=0.5,10-29=1.2,noise_refiner=1\"")
        if key.strip() in layers:
            raise UserError(f"--layers: '{key.strip()}' is given twice")
        layers[key.strip()] = weight
    return layers
