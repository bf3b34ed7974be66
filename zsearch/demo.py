"""Tiny offline models: a random Z-Image-Turbo pipeline, a tiny open_clip model, LoRAs, references.

Everything is built from the real classes with small configs and saved the way the real models
are (`save_pretrained`, an open_clip `local-dir:` folder, AI-Toolkit safetensors), so the code
under test loads them through the very same paths. Nothing is downloaded; everything is seeded,
so two builds give the same files. Building takes a few seconds on a CPU.

The reference images are rendered by the tiny pipeline itself at a hidden weighting of the demo
LoRAs (`DemoAssets.hidden_recipe`), so a search over the demo has a known optimum.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .blocks import all_modules, expected_shape
from .recipe import LoraWeights, Recipe

BUILD_VERSION = "3"  # bump when the demo assets change, so old builds are rebuilt

# The tiny transformer: same class and block structure as Z-Image-Turbo, width 32.
TRANSFORMER_CONFIG = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=32, n_layers=30, n_refiner_layers=2,
    n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0,
    t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 128, 128],
)
TEXT_HIDDEN = 16  # = cap_feat_dim: the pipeline feeds hidden_states[-2] of the text encoder
LORA_RANK = 4
LORA_SEEDS = (100, 101)  # one random LoRA per seed
CALIBRATION_RENDERS = 8  # renders at random weightings that centre the tiny CLIP's embeddings
SIZE = 64  # demo renders are SIZE x SIZE (a multiple of 16)
STEPS = 4
SEEDS = [1, 2]
PROMPTS = [
    "a lighthouse on a cliff at dusk",
    "a bowl of ripe oranges on a wooden table",
    "portrait of an old sailor with a grey beard",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}
# The weighting the reference images are rendered at (the search's known optimum).
HIDDEN_WEIGHTS = [
    dict(ratio=0.9, components={"attn": 1.4, "w2": 0.5}, layers={"0-9": 1.2, "10-19": 0.7, "20-29": 1.0}),
    dict(ratio=0.5, components={"adaLN": 0.3, "ffn": 1.6}, layers={"0-9": 0.4, "10-19": 1.3, "20-29": 0.8}),
]


@dataclass(frozen=True)
class DemoAssets:
    root: Path
    model_dir: Path  # a diffusers ZImagePipeline folder
    clip_dir: Path  # an open_clip `local-dir:` folder
    loras: list[Path]  # AI-Toolkit safetensors
    references: Path  # folder of PNGs rendered at hidden_recipe
    prompts: Path  # one prompt a line
    hidden_recipe: Recipe  # the weighting the references were rendered at
    seeds: tuple[int, ...] = tuple(SEEDS)
    width: int = SIZE
    height: int = SIZE
    steps: int = STEPS

    @property
    def clip_model(self) -> str:
        """The open_clip model name the scorer takes for the tiny CLIP."""
        return f"local-dir:{self.clip_dir}"

    @property
    def prompt_list(self) -> list[str]:
        return list(PROMPTS)


def build_demo(root: Path) -> DemoAssets:
    """Build (or reuse) every demo asset under `root`; safe to call from several processes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    assets = _assets(root)
    from .engine.judges.tiny import build_demo_judge  # the demo config's extra judge (kept when present)
    build_demo_judge(root / "aesthetic-head.safetensors", CLIP_CONFIG["model_cfg"]["embed_dim"])
    with _lock(root / ".lock"), _one_thread():
        stamp = root / ".complete"
        if stamp.exists() and stamp.read_text() == BUILD_VERSION:
            return assets
        build_tiny_pipeline(assets.model_dir)
        for index, path in enumerate(assets.loras):
            if not path.exists():
                _write_atomic_file(path, lambda tmp, i=index: _write_demo_lora(tmp, seed=LORA_SEEDS[i]))
        _build_once(assets.clip_dir, lambda d: _build_tiny_clip(d, assets.model_dir))
        if not assets.prompts.exists():
            _write_atomic_file(assets.prompts, lambda tmp: tmp.write_text(
                "# demo prompts, one a line\n" + "\n".join(PROMPTS) + "\n"))
        _build_once(assets.references, lambda d: _render_references(assets, d))
        stamp.write_text(BUILD_VERSION)
    return assets


def _assets(root: Path) -> DemoAssets:
    loras = [root / "loras" / "demo_style_a.safetensors", root / "loras" / "demo_style_b.safetensors"]
    recipe = Recipe(
        loras=[LoraWeights(path=path, **weights) for path, weights in zip(loras, HIDDEN_WEIGHTS)],
        info={"note": "hidden weighting the demo references were rendered at"},
    )
    return DemoAssets(root=root, model_dir=root / "tiny-z-image", clip_dir=root / "tiny-clip", loras=loras,
                      references=root / "references", prompts=root / "prompts.txt", hidden_recipe=recipe)


# ---------------------------------------------------------------- the tiny Z-Image pipeline

def build_tiny_pipeline(out_dir: Path) -> Path:
    """Save a tiny random ZImagePipeline to `out_dir` (skipped when already there)."""
    out_dir = Path(out_dir)
    _build_once(out_dir, _save_tiny_pipeline)
    return out_dir


def _save_tiny_pipeline(out_dir: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(**TRANSFORMER_CONFIG)
    with torch.no_grad():  # zero-initialised in diffusers; give them values so padding is exercised
        transformer.x_pad_token.copy_(torch.randn_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.randn_like(transformer.cap_pad_token))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,  # 8x down, as Flux's VAE
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, head_dim=8, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, num_hidden_layers=3, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def _tiny_tokenizer():
    """A byte-level BPE tokenizer of the Qwen2 class with Qwen's special tokens and chat template."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=1024)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------- the tiny CLIP

def _build_tiny_clip(out_dir: Path, model_dir: Path) -> None:
    """A random tiny open_clip model, centred on demo renders, saved as a `local-dir:` folder.

    A random CLIP maps every image close to one common direction (all cosines ~0.99), which would
    make every weighting score alike. Setting the bias of its last LayerNorm to minus the mean
    pooled feature of some demo renders (at weightings other than the hidden one) centres the
    embeddings, so cosines spread over [-1, 1] as a trained CLIP's do.
    """
    import open_clip
    from diffusers import ZImagePipeline
    from safetensors.torch import save_file

    from .engine.scorer import preprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2))
    torch.manual_seed(1)
    model = open_clip.create_model(f"local-dir:{out_dir}").eval()  # random init from the config

    pipe = ZImagePipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    renders = []
    for k in range(CALIBRATION_RENDERS):  # random weightings, prompts and seeds (none of SEEDS)
        factors = (torch.rand(len(LORA_SEEDS), generator=generator) * 1.5).tolist()
        with _fused(pipe.transformer, [{path: f for path in demo_lora_tensors(seed)}
                                       for f, seed in zip(factors, LORA_SEEDS)]):
            renders.append(render_plain(pipe, PROMPTS[k % len(PROMPTS)], 1000 + k, SIZE, SIZE, STEPS))
    captured = {}
    hook = model.visual.ln_post.register_forward_hook(lambda module, args, out: captured.update(out=out))
    with torch.no_grad():
        model.encode_image(preprocess(torch.stack(renders), dict(model.visual.preprocess_cfg)))
        hook.remove()
        pooled = captured["out"][:, 0]  # the class token: this config pools by token
        model.visual.ln_post.bias -= pooled.mean(dim=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))


# ---------------------------------------------------------------- LoRAs

def demo_lora_tensors(seed: int, dim: int = TRANSFORMER_CONFIG["dim"], rank: int = LORA_RANK
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A (rank x in), B (out x rank)) of a random LoRA on every module.

    B·A is as large as the base weight (not near zero as a fresh LoRA would be), so different
    weightings render visibly different images.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in all_modules():
        out_features, in_features = expected_shape(module.component, dim)
        down = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
        up = torch.randn(out_features, rank, generator=generator) / rank ** 0.5 * 0.6
        tensors[module.path] = (down, up)
    return tensors


def _write_demo_lora(path: Path, seed: int) -> None:
    from safetensors.torch import save_file

    state = {}
    for module_path, (down, up) in demo_lora_tensors(seed).items():
        state[f"diffusion_model.{module_path}.lora_A.weight"] = down.contiguous()
        state[f"diffusion_model.{module_path}.lora_B.weight"] = up.contiguous()
    save_file(state, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------- reference images

def _render_references(assets: DemoAssets, out_dir: Path) -> None:
    """Render every (prompt, seed) at the hidden weighting, fused straight into the weights.

    Deliberately independent of zsearch.engine: the weights are W + sum_i s_i·B_i·A_i, the very
    definition the engine must reproduce.
    """
    from diffusers import ZImagePipeline
    from PIL import Image

    pipe = ZImagePipeline.from_pretrained(assets.model_dir)
    pipe.set_progress_bar_config(disable=True)
    scales = [weights.module_scales(demo_lora_tensors(seed))
              for weights, seed in zip(assets.hidden_recipe.loras, LORA_SEEDS)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with _fused(pipe.transformer, scales):
        for p, prompt in enumerate(PROMPTS):
            for seed in SEEDS:
                image = render_plain(pipe, prompt, seed, SIZE, SIZE, STEPS)
                array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(array).save(out_dir / f"ref_p{p}_s{seed}.png")


@contextmanager
def _fused(transformer, scales: list[dict[str, float]]):
    """The demo LoRAs fused into the weights at per-module `scales` (one dict per LoRA), then undone."""
    original = {path: transformer.get_submodule(path).weight.detach().clone()
                for per_lora in scales for path in per_lora}
    with torch.no_grad():
        for per_lora, seed in zip(scales, LORA_SEEDS):
            for path, (down, up) in demo_lora_tensors(seed).items():
                transformer.get_submodule(path).weight += per_lora[path] * (up @ down)
    try:
        yield
    finally:
        with torch.no_grad():
            for path, weight in original.items():
                transformer.get_submodule(path).weight.copy_(weight)


def render_plain(pipe, prompt: str, seed: int, height: int, width: int, steps: int) -> torch.Tensor:
    """One image (3,H,W) in [0,1] from a pipeline with its text encoder, noise as the engine draws it."""
    from .engine.render import initial_latents

    latents = initial_latents(seed, pipe.transformer.config.in_channels, height, width, pipe.vae_scale_factor)
    result = pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=0.0,
                  latents=latents, output_type="pt")
    return result.images[0]


# ---------------------------------------------------------------- helpers

@contextmanager
def _one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine lose a lot to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _lock(path: Path):
    from filelock import FileLock  # an OS lock on every OS (fcntl is POSIX-only)

    with FileLock(str(path)):
        yield


def _build_once(target: Path, build) -> None:
    """Build a folder in a temporary sibling, then rename it into place; skip if it exists."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        _make_readable(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic_file(target: Path, write) -> None:
    from .atomic import atomic_path

    with atomic_path(target) as tmp:
        write(tmp)
        _make_readable(tmp)


def _make_readable(path: Path) -> None:
    """Temporary files and folders are private (0600/0700); finished assets are ordinary ones."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod(0o755 if item.is_dir() else 0o644)


def main() -> None:  # python -m zsearch.demo [DIR]
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-assets")
    assets = build_demo(root)
    print(f"demo assets in {assets.root}")


if __name__ == "__main__":
    main()
