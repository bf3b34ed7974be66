"""One whole `zsearch run` on a full-size random Z-Image model folder: the loop end to end.

    python bench/fullrun.py --out /tmp/zsearch-full        # GPU: 6 B-parameter transformer, Qwen3-4B-shaped
                                                         # text encoder, Flux-shaped VAE, ViT-L-14 scorer
    python bench/fullrun.py --out /tmp/z --smoke           # the same, narrow, on the CPU (seconds)

Every model is built from its config with random weights straight on the device (building 6 B
parameters on a CPU takes minutes) and written with save_pretrained, so `zsearch run` loads them
through its own code path: the model folder, two random rank-32 LoRA files (AI-Toolkit keys), three
reference images, a CLIP checkpoint file and a config. Nothing is downloaded. Then it times
`zsearch run` (a subprocess: the real entry point) and reads its log.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsearch.lora.blocks import all_modules  # noqa: E402
from zsearch.engine.device import default_dtype, pick_device  # noqa: E402

PROMPTS = ["a lighthouse on a cliff at dusk", "a bowl of ramen on a wooden table",
           "a portrait of an old sailor", "a city street in the rain at night"]


def build_model_folder(folder: Path, device: torch.device, dtype: torch.dtype, smoke: bool) -> str:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from zsearch.demo.pipeline import tiny_tokenizer  # a local byte-level Qwen2 tokenizer: no download

    tokenizer = tiny_tokenizer()
    text_hidden = 64 if smoke else 2560
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = ZImageTransformer2DModel(
                **(dict(dim=256, n_heads=2, n_kv_heads=2, n_layers=2, n_refiner_layers=1) if smoke else {}),
                cap_feat_dim=text_hidden)
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                block_out_channels=(32, 32, 32, 32) if smoke else (128, 256, 512, 512),
                                layers_per_block=1 if smoke else 2, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.3611,
                                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
            text_encoder = Qwen3Model(Qwen3Config(  # Qwen3-4B's shape (only the vocabulary is the tokenizer's)
                vocab_size=len(tokenizer), hidden_size=text_hidden, head_dim=16 if smoke else 128,
                num_attention_heads=4 if smoke else 32, num_key_value_heads=2 if smoke else 8,
                intermediate_size=128 if smoke else 9728, num_hidden_layers=3 if smoke else 36,
                max_position_embeddings=4096, rope_theta=1e6, pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False))
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    params = sum(p.numel() for p in transformer.parameters())
    del pipe, transformer, text_encoder, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return f"transformer {params / 1e9:.2f} B parameters" if params > 1e8 else f"transformer {params / 1e6:.1f} M parameters"


def write_inputs(root: Path, dim: int, n_layers: int, size: int, device: torch.device, clip_name: str) -> None:
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    from zsearch.lora.synth import make_random_lora, save_in_format

    paths = [m.path for m in all_modules(n_layers)]
    (root / "loras").mkdir(parents=True, exist_ok=True)
    for seed in (1, 2):
        lora = make_random_lora(dim, 32, [p for p in paths if _present(p, n_layers)], seed=seed)
        save_in_format(lora, root / "loras" / f"random_{seed}.safetensors", "ai-toolkit")
    (root / "references").mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(3):
        pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "references" / f"ref{index}.png")
    clip = open_clip.create_model(clip_name, pretrained=None, device=device)  # random weights
    save_file({k: v.contiguous().cpu() for k, v in clip.state_dict().items()}, str(root / "clip.safetensors"))
    (root / "prompts.txt").write_text("\n".join(PROMPTS[:2] if dim < 3840 else PROMPTS) + "\n")  # smoke: 2


def _present(path: str, n_layers: int) -> bool:
    match = re.match(r"(noise_refiner|context_refiner)\.(\d+)\.", path)
    return match is None or int(match.group(2)) < (1 if n_layers < 30 else 2)


def write_config(root: Path, args, device: torch.device) -> Path:
    config = root / "full.yaml"
    config.write_text(f"""name: fullrun
model: {root / 'model'}
device: {device}
output: {root / 'results'}
loras:
  - path: loras/random_1.safetensors
    search: {{ratio: [0.0, 1.5], components: [0.0, 2.0], layers: bands}}
  - path: loras/random_2.safetensors
    search: {{ratio: [0.0, 1.5], components: [0.0, 2.0], layers: bands}}
references: references
prompts: prompts.txt
seeds: {[1] if args.smoke else [1, 2]}
render: {{steps: {args.steps}, width: {args.size}, height: {args.size}, batch: 4, compile: {args.compile}, memory: {args.memory}}}
scorer: {{model: {args.clip}, pretrained: {root / 'clip.safetensors'}}}
search: {{trials: {args.trials}, seed: 0}}
noise: {{repeats: 1}}
validation: {{top_k: 1}}
""")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="a folder with room for ~21 GB at full size (smoke: a temporary one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="narrow models on the CPU, to test this script")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--size", type=int, help="render size (1024; smoke 32)")
    parser.add_argument("--steps", type=int, help="steps (8; smoke 1)")
    parser.add_argument("--compile", default="auto", help="render.compile for the run")
    parser.add_argument("--memory", default="auto", help="render.memory for the run")
    parser.add_argument("--markdown", help="append the result rows to this Markdown file")
    args = parser.parse_args(argv)
    if args.out is None and not args.smoke:
        parser.error("--out is required (a folder with room for ~21 GB)")
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="zsearch-fullrun-") as tmp:
            return run_bench(args, Path(tmp))
    return run_bench(args, Path(args.out))


def run_bench(args, out: Path) -> None:
    if args.smoke:
        args.device = "cpu" if args.device == "auto" else args.device
        args.trials = min(args.trials, 2)
    device = pick_device(args.device)
    args.size = args.size or (32 if args.smoke else 1024)
    args.steps = args.steps or (1 if args.smoke else 8)
    args.clip = "ViT-S-32" if args.smoke else "ViT-L-14"
    root = out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (root / "model" / "model_index.json").is_file():
        built = build_model_folder(root / "model", device, default_dtype(device) if not args.smoke else torch.float32,
                                   args.smoke)
    else:
        built = "model folder reused"
    write_inputs(root, 256 if args.smoke else 3840, 2 if args.smoke else 30, args.size, device, args.clip)
    config = write_config(root, args, device)
    prepared = time.perf_counter() - started
    print(f"fullrun: built and saved in {prepared:.0f} s ({built})", flush=True)

    log = root / "results" / "zsearch.log"
    log.unlink(missing_ok=True)
    (root / "results" / "study.db").unlink(missing_ok=True)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "zsearch.cli", "run", str(config)], cwd=root)
    seconds = time.perf_counter() - t
    text = log.read_text() if log.is_file() else ""
    phases = [ast.literal_eval(found) for found in re.findall(r"trial \d+: score \S+ \(best [^)]*\) (\{.*\})", text)]
    trial_seconds = [sum(p.values()) for p in phases]
    later = phases[1:] or phases
    phase_means = ", ".join(f"{name} {sum(p.get(name, 0.0) for p in later) / max(1, len(later)):.3f} s"
                            for name in (later[0] if later else {}))
    placement = next((line.split(" INFO ", 1)[-1] for line in text.splitlines() if "weighting" in line
                      and "memory" in line), "?")
    rows = [f"# bench/fullrun.py — {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
            f"{' — SMOKE (narrow models, CPU)' if args.smoke else ''}",
            "", "| what | value |", "|---|---|",
            f"| exit code of `zsearch run` | {done.returncode} |",
            f"| building + saving the random model folder | {prepared:.0f} s ({built}) |",
            f"| `zsearch run` wall time ({args.trials} trials, {'2 prompts × 1 seed' if args.smoke else '4 prompts × 2 seeds'} at {args.size}² × {args.steps} "
            f"steps, noise 1 set, validation top 1) | {seconds:.1f} s |",
            f"| engine placement | {placement} |",
            f"| complete trials logged | {len(trial_seconds)} |",
            f"| phases per trial (mean after the first) | {phase_means or 'n/a'} |",
            f"| s/trial (logged, mean of trials after the first) | "
            f"{sum(trial_seconds[1:]) / max(1, len(trial_seconds) - 1):.2f} s |" if trial_seconds else
            "| s/trial | n/a (no trial line in the log) |"]
    out = "\n".join(rows)
    print(out)
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as handle:
            handle.write(out + "\n\n")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
