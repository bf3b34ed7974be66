"""What one search trial costs: set a weighting, render, score — zsearch's two ways and the naive one.

    python bench/trial.py                  # the tiny demo model, on the CPU (seconds)
    python bench/trial.py --smoke          # one trial of 2 images, 1 step: tests this script (CI)
    python bench/trial.py --full           # full-size Z-Image-Turbo architecture, random bf16 weights (GPU)
    python bench/trial.py --full --device cpu --layers 1 --refiner-layers 1 --size 128 --steps 1 \\
        --images 1 --trials 1              # a CPU sanity check of the --full path

Ways, measured in the same process on the same pipeline, the same random recipes in the same order:
- bare:  the pipeline with no LoRA at all (the floor: what rendering the images costs anyway);
- side:  zsearch's side path (ranks concatenated, one flat scale buffer);
- fused: zsearch's fused-from-copy (W = W0 + B·diag(s)·A rebuilt each trial);
- naive: diffusers/PEFT: load_lora_weights once, then set_adapters + fuse_lora … unfuse_lora per trial.
  (It gets one scalar weight per LoRA: per-module weights would cost it more, not less.)

--compile compiles the transformer's repeated blocks first (render.compile); each way's first trial
then carries its compile warm-up, reported apart. --memory fp8|offload holds the transformer's weights
that way (render.memory; bare and side only: fused and naive need the weights whole). --peak-batches
1,4 adds one render per batch size per way, for its peak GPU memory. --markdown FILE appends the
table there. bench/gpu.sh runs all of it at full size on one GPU.

--full builds everything from configs, nothing is downloaded: the transformer (dim 3840, 30 layers +
2+2 refiners), Flux's VAE shape, random prompt embeddings (the text encoder is not part of a trial),
2 random rank-32 LoRAs on every module, and an open_clip ViT-L-14 with random weights as scorer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsearch.lora.blocks import COMPONENTS, all_modules  # noqa: E402
from zsearch.engine.compile import compile_blocks  # noqa: E402
from zsearch.engine.device import default_dtype, pick_device  # noqa: E402
from zsearch.engine.memory import place_pipeline  # noqa: E402
from zsearch.engine.render import Job, Renderer  # noqa: E402
from zsearch.judges.openclip import Scorer  # noqa: E402
from zsearch.engine.weighting import attach_loras  # noqa: E402
from zsearch.lora.model import Lora  # noqa: E402
from zsearch.lora.recipe import LoraWeights, Recipe  # noqa: E402

FULL_PROMPT_TOKENS = 120  # a typical Z-Image prompt after the chat template


@dataclass
class Setup:
    pipe: object
    loras: list[Lora]
    prompt_embeds: list[torch.Tensor]
    jobs: list[Job]
    scorer: Scorer
    steps: int
    size: int
    batch: int
    device: torch.device
    n_layers: int
    notes: list[str] = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    memory: str = "full"
    compiled: bool = False
    peak_batches: list[int] = field(default_factory=list)


# -- building the models ---------------------------------------------------------------------------

def tiny_setup(args, device, dtype) -> Setup:
    from zsearch.demo.build import build_demo
    from zsearch.engine.pipeline import load_pipeline
    from zsearch.engine.prompts import encode_prompts
    from zsearch.lora.read import load_loras

    root = Path(args.demo_dir or os.environ.get("ZSEARCH_BENCH_DEMO") or Path(tempfile.gettempdir()) / "zsearch-bench-demo")
    assets = build_demo(root)
    prompts = assets.prompt_list
    embeds = encode_prompts(str(assets.model_dir), prompts, root / "cache", device, dtype)
    pipe = load_pipeline(str(assets.model_dir), device, dtype, with_text_encoder=False)
    scorer = Scorer.load(assets.clip_model, None, assets.references, device=device, cache_dir=root / "cache")
    n_images = args.images or len(prompts) * len(assets.seeds)
    jobs = [Job(i % len(prompts), prompts[i % len(prompts)], 1 + i // len(prompts)) for i in range(n_images)]
    return Setup(pipe, load_loras(assets.loras), embeds, jobs, scorer, args.steps or assets.steps,
                 args.size or assets.width, args.batch or n_images, device, n_layers=30,
                 notes=["tiny demo model (dim 32, 30 layers), demo LoRAs rank 4, tiny CLIP"], dtype=dtype)


def full_setup(args, device, dtype) -> Setup:
    import open_clip
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    from zsearch.lora.synth import make_random_lora

    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build straight in the target dtype: no fp32 detour of 25 GB
    try:
        with torch.device(device):
            transformer = ZImageTransformer2DModel(n_layers=args.layers, n_refiner_layers=args.refiner_layers,
                                                   dim=args.dim, n_heads=args.dim // 128, n_kv_heads=args.dim // 128)
            vae = AutoencoderKL(  # the shape of Flux's VAE, as Z-Image-Turbo ships it
                in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.3611,
                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    finally:
        torch.set_default_dtype(previous)
    transformer.eval()
    vae.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)

    present = {name for name, _ in transformer.named_modules()}
    paths = [m.path for m in all_modules(args.layers) if m.path in present]
    loras = [make_random_lora(transformer.config.dim, args.rank, paths, seed=seed) for seed in (1, 2)]
    generator = torch.Generator().manual_seed(0)
    n_images = args.images or 4
    embeds = [torch.randn(FULL_PROMPT_TOKENS, transformer.config.cap_feat_dim, generator=generator)
              .to(device, dtype) for _ in range(n_images)]
    jobs = [Job(i, f"prompt {i}", 1) for i in range(n_images)]

    clip = open_clip.create_model(args.clip, pretrained=None, device=device).eval()  # random: no download
    tokenizer = open_clip.get_tokenizer(args.clip)
    scorer = Scorer.from_model(clip, tokenizer, torch.rand(4, 3, 1024, 1024, generator=generator), device=device)
    blocks = args.layers + 2 * args.refiner_layers
    return Setup(pipe, loras, embeds, jobs, scorer, args.steps or 8, args.size or 1024, args.batch or n_images,
                 device, n_layers=args.layers,
                 notes=[f"{'full-size' if args.dim == 3840 else 'NARROW (dim ' + str(args.dim) + ')'} Z-Image "
                        f"architecture: dim {args.dim}, {args.layers} layers + {args.refiner_layers}+"
                        f"{args.refiner_layers} refiners ({blocks} blocks), random {str(dtype).split('.')[-1]} "
                        f"weights, Flux-shaped VAE; 2 random LoRAs rank {args.rank} on all {len(paths)} modules; "
                        f"open_clip {args.clip} (random weights); built in {time.perf_counter() - started:.0f} s"],
                 dtype=dtype)


def prepare(setup: Setup, args) -> None:
    """Hold the transformer as --memory says (as the engine does) and compile it if asked."""
    setup.memory, setup.compiled = args.memory, args.compile
    setup.peak_batches = [int(b) for b in args.peak_batches.split(",") if b]
    if args.memory == "offload":
        setup.pipe.transformer.to("cpu")  # built on the device: offloading starts from CPU memory
    place_pipeline(setup.pipe, args.memory, setup.device, setup.dtype)
    if args.compile:
        compile_blocks(setup.pipe.transformer, backend=args.compile_backend)
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()


# -- the trials ------------------------------------------------------------------------------------

def random_recipes(setup: Setup, count: int, seed: int) -> list[Recipe]:
    """Random search-like recipes: a ratio, 8 component weights and 3 layer bands per LoRA."""
    rng = random.Random(seed)
    n = setup.n_layers
    cuts = sorted({0, n // 3, 2 * n // 3, n})
    bands = [f"{a}-{b - 1}" for a, b in zip(cuts, cuts[1:]) if b > a]
    return [Recipe([LoraWeights(path=lora.path, ratio=rng.uniform(0.0, 1.5),
                                components={c: rng.uniform(0.0, 2.0) for c in COMPONENTS},
                                layers={band: rng.uniform(0.0, 2.0) for band in bands})
                    for lora in setup.loras]) for _ in range(count)]


class Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def run_way(setup: Setup, way: str, recipes: list[Recipe], warmup: int) -> dict:
    """Time `len(recipes) - warmup` trials of one way; returns mean seconds per phase and peak memory."""
    clock = Clock(setup.device)
    renderer = Renderer(setup.pipe, setup.prompt_embeds, device=setup.device)
    prompts = [job.prompt for job in setup.jobs]
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    t = clock()
    apply, release = _way(setup, way)
    attach_seconds = clock() - t
    phases = {"set": [], "render": [], "unset": [], "score": []}
    first_trial = None
    for index, recipe in enumerate(recipes):
        t0 = clock()
        apply(recipe)
        t1 = clock()
        images = renderer.render(setup.jobs, steps=setup.steps, width=setup.size, height=setup.size,
                                 batch=setup.batch)
        t2 = clock()
        unset_seconds = release(final=False)
        t3 = clock()
        setup.scorer.score(images, prompts)
        t4 = clock()
        if index == 0:
            first_trial = t4 - t0  # with --compile: the warm-up (this way's graphs compiled) included
        if index >= warmup:
            for name, value in zip(phases, (t1 - t0, t2 - t1, unset_seconds, t4 - t3)):
                phases[name].append(value)
    trials_peak = torch.cuda.max_memory_allocated(setup.device) / 2**30 if setup.device.type == "cuda" else None
    peaks = {}
    for batch in setup.peak_batches:  # one more render per batch size, for its peak memory alone
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
        renderer.render(setup.jobs[:1] * batch, steps=setup.steps, width=setup.size, height=setup.size, batch=batch)
        peaks[batch] = torch.cuda.max_memory_allocated(setup.device) / 2**30 if setup.device.type == "cuda" else None
    release(final=True)
    result = {name: statistics.mean(values) for name, values in phases.items()}
    result["first_trial"] = first_trial
    result["image"] = result["render"] / len(setup.jobs)
    result["peaks_gib"] = peaks
    result["set_weighting"] = result["set"] + result["unset"]  # naive unfuses: part of changing weights
    result["trial"] = result["set_weighting"] + result["render"] + result["score"]
    result["attach"] = attach_seconds
    result["peak_gib"] = trials_peak
    return result


def _way(setup: Setup, way: str):
    """(apply(recipe), release(final) -> seconds spent un-applying) for one way."""
    transformer = setup.pipe.transformer
    if way == "bare":
        return (lambda recipe: None), (lambda final: 0.0)
    if way in ("side", "fused"):
        weighting = attach_loras(transformer, setup.loras, way, device=setup.device, dtype=setup.dtype)

        def release(final):
            if final:
                weighting.detach()
            return 0.0
        return weighting.set_recipe, release
    if way == "naive":
        names = []
        for index, lora in enumerate(setup.loras):
            state = {}
            for path, module in lora.modules.items():  # AI-Toolkit keys, which diffusers reads
                state[f"diffusion_model.{path}.lora_A.weight"] = module.down
                state[f"diffusion_model.{path}.lora_B.weight"] = module.up * module.scale
            name = f"lora{index}"
            setup.pipe.load_lora_weights(state, adapter_name=name)
            names.append(name)
        clock = Clock(setup.device)

        def apply(recipe):
            setup.pipe.set_adapters(names, [weights.ratio for weights in recipe.loras])
            setup.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)

        def release(final):
            t = clock()
            if not final:
                setup.pipe.unfuse_lora()
                return clock() - t
            setup.pipe.unload_lora_weights()
            return 0.0
        return apply, release
    raise ValueError(way)


# -- report ------------------------------------------------------------------------------------------

def report(setup: Setup, results: dict[str, dict], args) -> str:
    n = len(setup.jobs)
    bare = results.get("bare")
    mode = f"memory {setup.memory}, {'compiled' if setup.compiled else 'eager'}"
    lines = [f"# bench/trial.py — {time.strftime('%Y-%m-%d %H:%M')}, device {describe(setup.device)}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} CPU threads — {mode}",
             *[f"# {note}" for note in setup.notes],
             f"# one trial = set weighting + render {n} image(s) at {setup.size}² × {setup.steps} steps "
             f"(batch {setup.batch}) + score; mean of {args.trials} trial(s) after {args.warmup} warm-up",
             "",
             "| " + " | ".join(["way", "mode", "set weighting", "render", "s/image", "score", "s/trial", "set share",
                                "first trial", "peak GPU memory (trial)",
                                *[f"peak at batch {b}" for b in setup.peak_batches]]) + " |",
             "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(setup.peak_batches)]
    for way, r in results.items():
        share = f"{100 * r['set_weighting'] / r['trial']:.2f} %" if way != "bare" else "—"
        cells = [way, mode, fmt_time(r["set_weighting"]), f"{r['render']:.3f} s", f"{r['image']:.3f} s",
                 f"{r['score']:.3f} s", f"{r['trial']:.3f}", share, f"{r['first_trial']:.2f} s", fmt_gib(r["peak_gib"]),
                 *[fmt_gib(r["peaks_gib"].get(b)) for b in setup.peak_batches]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    naive = results.get("naive")
    for way in ("side", "fused"):
        r = results.get(way)
        if r is None:
            continue
        if naive:
            lines.append(f"- {way}: naive s/trial ÷ {way} s/trial = {naive['trial'] / r['trial']:.2f}×; "
                         f"set-weighting {naive['set_weighting'] / max(r['set_weighting'], 1e-9):.0f}× faster "
                         f"than naive set_adapters+fuse+unfuse ({fmt_time(naive['set_weighting'])})")
        if bare:
            overhead = (r["set_weighting"] + r["render"]) / bare["render"] - 1
            lines.append(f"- {way}: overhead over bare rendering of the same images "
                         f"(set + render vs bare render) = {100 * overhead:+.1f} %")
    if bare and "side" in results:
        per_image = (results["side"]["render"] - bare["render"]) / n
        lines.append(f"- side path per-image cost: {1000 * per_image:+.2f} ms/image "
                     f"({100 * per_image * n / bare['render']:+.1f} % of a bare render)")
    if setup.compiled:
        for way, r in results.items():
            lines.append(f"- {way} compiled: first trial {r['first_trial']:.2f} s vs {r['trial']:.2f} s later: "
                         f"compile warm-up ≈ {r['first_trial'] - r['trial']:.1f} s")
    if setup.device.type != "cuda":
        lines.append(f"- process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()})"


def fmt_gib(value: float | None) -> str:
    return f"{value:.2f} GiB" if value is not None else "n/a (CPU)"


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size architecture with random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layers", type=int, default=30, help="--full: main layers (30 in Z-Image-Turbo)")
    parser.add_argument("--refiner-layers", type=int, default=2, help="--full: blocks per refiner (2)")
    parser.add_argument("--rank", type=int, default=32, help="--full: LoRA rank")
    parser.add_argument("--images", type=int, help="images per trial (default 4 full, 6 tiny)")
    parser.add_argument("--size", type=int, help="render size (default 1024 full, 64 tiny)")
    parser.add_argument("--steps", type=int, help="steps (default 8 full, 4 tiny)")
    parser.add_argument("--batch", type=int, help="render batch (default: all images at once)")
    parser.add_argument("--trials", type=int, default=5, help="timed trials per way")
    parser.add_argument("--warmup", type=int, default=1, help="untimed trials per way first")
    parser.add_argument("--ways", default="bare,side,fused,naive")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--demo-dir", help="tiny: where the demo assets are (built if missing)")
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--dim", type=int, default=3840, help="--full: width (3840; a multiple of 128)")
    parser.add_argument("--clip", default="ViT-L-14", help="--full: open_clip architecture of the scorer")
    parser.add_argument("--compile", action="store_true", help="compile the repeated blocks (render.compile)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (smoke: aot_eager)")
    parser.add_argument("--memory", default="full", choices=["full", "fp8", "offload"], help="render.memory")
    parser.add_argument("--peak-batches", default="", help="e.g. 1,4: one render per batch size for its peak")
    parser.add_argument("--markdown", help="append the table to this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to test this script (timings meaningless)")
    args = parser.parse_args(argv)
    if args.smoke:  # what is not given explicitly
        for name, value in (("trials", 1), ("warmup", 0), ("images", 2), ("steps", 1), ("threads", 1)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = default_dtype(device)
    torch.manual_seed(0)
    with torch.no_grad():
        setup = full_setup(args, device, dtype) if args.full else tiny_setup(args, device, dtype)
        prepare(setup, args)
        recipes = random_recipes(setup, args.trials + args.warmup, seed=0)
        results = {}
        for way in args.ways.split(","):
            if setup.memory != "full" and way in ("fused", "naive"):
                print(f"{way}: skipped (needs the weights whole; memory {setup.memory})", file=sys.stderr)
                continue
            results[way] = run_way(setup, way, recipes, args.warmup)
            print(f"{way}: {json.dumps({k: v for k, v in results[way].items()})}", file=sys.stderr, flush=True)
    text = report(setup, results, args)
    print(text)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as out:
            out.write(text + "\n\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
