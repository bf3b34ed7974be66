"""Tiny offline models: a random Z-Image-Turbo pipeline, a taught tiny open_clip, LoRAs, references.

Everything is built from the real classes with small configs and saved the way the real models
are (`save_pretrained`, an open_clip `local-dir:` folder, AI-Toolkit safetensors), so the code
under test loads them through the very same paths. Nothing is downloaded; everything is seeded,
so two builds give the same files. Building takes under a minute on a CPU (about 50 s on 2 cores).

The demo is a miniature of real use:
- the two demo LoRAs have a look, as style LoRAs do: each component and layer band of each LoRA
  pushes the image in its own direction, the same for every seed and prompt;
- the images are the model's, not the initial noise: the subject is a colour per latent patch, the
  look a texture within it (`_paint_model_output`);
- the reference images show that look: they are rendered at a hidden weighting
  (`DemoAssets.hidden_recipe`) with seeds of their own, never the search's training, validation
  or noise seeds (on the search's subjects: in this tiny model the look's strength still depends a
  little on the subject, so references of other subjects would move the peak);
- the judge sees the look and the prompt, not the seed's layout (`zsearch.demo.judge`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from zsearch.lora.blocks import COMPONENTS, all_modules, expected_shape
from zsearch.lora.recipe import LoraWeights, Recipe

BUILD_VERSION = "6"  # bump when the demo assets change, so old builds are rebuilt

# The tiny transformer: same class and block structure as Z-Image-Turbo, width 32.
TRANSFORMER_CONFIG = dict(
    all_patch_size=[2], all_f_patch_size=[1], in_channels=16, dim=32, n_layers=30, n_refiner_layers=2,
    n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0,
    t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 128, 128],
)
TEXT_HIDDEN = 16  # = cap_feat_dim: the pipeline feeds hidden_states[-2] of the text encoder
LORA_RANK = 4
LORA_SEEDS = (100, 101)  # one demo LoRA per seed
SIZE = 64  # demo renders are SIZE x SIZE (a multiple of 16)
STEPS = 4
SEEDS = [1, 2]  # the tests' search seeds (configs/demo.yaml searches 1-8)
PROMPTS = [
    "a lighthouse on a cliff at dusk",
    "a bowl of ripe oranges on a wooden table",
    "portrait of an old sailor with a grey beard",
]
# More subjects, which the judge learns and the LoRA design calibrates on, beside the search's.
EXTRA_PROMPTS = [
    "a red barn in a snowy field",
    "a cup of coffee on a windowsill",
    "a cat asleep on a blue sofa",
    "a sailing boat on a calm sea",
]
# The references' seeds, from 90000 on: apart from the search's, the validation's (+1000) and the noise's (+2000).
REFERENCE_SEEDS = [90001, 90002, 90003, 90004, 90005, 90006]
CALIBRATION_SEEDS = [70001, 70002]  # renders that find each module's typical input (LoRA design)
JUDGE_SEED_BASE = 80000  # the judge's lessons are rendered with seeds from here on
JUDGE_WEIGHTINGS = 64  # random weightings the judge learns from, one render of each per prompt
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
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
# The weighting the reference images are rendered at (the search's known optimum), inside the
# space configs/demo.yaml searches (per LoRA: ratio, attn, ffn, adaLN).
HIDDEN_WEIGHTS = [
    dict(ratio=0.9, components={"attn": 1.4, "ffn": 0.6, "adaLN": 1.0}),
    dict(ratio=0.5, components={"attn": 0.6, "ffn": 1.5, "adaLN": 0.4}),
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
    reference_prompts: tuple[str, ...] = tuple(PROMPTS)  # the subjects the references show
    reference_seeds: tuple[int, ...] = tuple(REFERENCE_SEEDS)
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
    from zsearch.demo.aesthetic import build_demo_judge  # the demo config's extra judge (kept when present)
    build_demo_judge(root / "aesthetic-head.safetensors", CLIP_CONFIG["model_cfg"]["embed_dim"])
    with _lock(root / ".lock"), _one_thread():
        stamp = root / ".complete"
        if stamp.exists() and stamp.read_text() == BUILD_VERSION:
            return assets
        build_tiny_pipeline(assets.model_dir)
        if not all(path.exists() for path in assets.loras):
            _write_demo_loras(assets)
        _build_once(assets.clip_dir, lambda d: _build_tiny_clip(d, assets))
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
        block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=1,  # 8x down, as Flux's VAE
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
    to_rgb = _make_decoder_local(vae.decoder)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, head_dim=8, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, num_hidden_layers=3, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    _give_look_channels(pipe, to_rgb)
    pipe.save_pretrained(out_dir, safe_serialization=True)


CONTRAST = 0.5  # the decoder's output size: renders with few clipped pixels, so colours stay linear


def _make_decoder_local(decoder) -> torch.Tensor:
    """Give the random decoder the one trait of a real VAE the demo needs: it decodes locally.

    A real decoder turns each latent patch into the colours and texture it encodes, so a shift
    of the latents (a LoRA's look) is a shift of the image. A random one scrambles that through
    its residual blocks, mid attention and per-channel norms. Here the upsamplers pass their
    input on, the residual blocks add only a little texture, the attention adds nothing, one norm
    group spans every channel (see _save_tiny_pipeline) and conv_out maps latent channels to RGB.
    """
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for conv in [decoder.conv_in, *(up.conv for block in decoder.up_blocks for up in (block.upsamplers or []))]:
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(conv.weight.shape[0], conv.weight.shape[1])
            conv.bias.zero_()
        for block in [decoder.mid_block, *decoder.up_blocks]:
            for resnet in block.resnets:
                resnet.conv2.weight.mul_(0.1)
                resnet.conv2.bias.zero_()
        for attention in decoder.mid_block.attentions:
            attention.to_out[0].weight.zero_()
            attention.to_out[0].bias.zero_()
        to_rgb = torch.randn(3, decoder.conv_out.weight.shape[1], generator=generator)
        to_rgb = 0.8 * to_rgb / to_rgb.norm(dim=1, keepdim=True)
        decoder.conv_out.weight.zero_()
        decoder.conv_out.weight[:, :, 1, 1] = CONTRAST * to_rgb
        decoder.conv_out.bias.copy_(-0.2 * CONTRAST * to_rgb.sum(dim=1))  # SiLU of a unit normal averages ~0.2
    return to_rgb


# The transformer's last LOOK_CHANNELS residual channels carry the look, the way a real model's
# features carry palette and texture apart from the subject: no block reads them (only the norms
# see them), every main block writes the model's own look into them through a gate, and the final
# layer paints each one as its own colour pattern in every 2x2 latent patch.
LOOK_CHANNELS = 8
BASE_LOOK = 0.3  # what each main block writes into the look channels, relative to its output's size
LOOK_GATE = 0.5  # the base blocks' gate on the look channels (tanh), which adaLN LoRAs move
PATTERN_GAIN = 2.0  # latent size of a look channel's pattern, per LOOK_SCALE of the channel's value
LOOK_SCALE = 0.25  # the look channels' size beside the content's: small, so the norms barely couple them
OUTPUT_GAIN = 5.0  # the final layer's output, so the image is mostly the model's (_paint_model_output)


def _give_look_channels(pipe, to_rgb: torch.Tensor) -> None:
    transformer = pipe.transformer
    dim = transformer.config.dim
    look = _look_slice(dim)
    blocks = [*transformer.noise_refiner, *transformer.context_refiner, *transformer.layers]
    with torch.no_grad():
        for embed in [*transformer.all_x_embedder.values(), transformer.cap_embedder[1]]:
            embed.weight[look] = 0
            embed.bias[look] = 0
        transformer.x_pad_token[:, look] = 0
        transformer.cap_pad_token[:, look] = 0
        for block in blocks:
            attention, ffn = block.attention, block.feed_forward
            for reader in (attention.to_q, attention.to_k, attention.to_v, ffn.w1, ffn.w3):
                reader.weight[:, look] = 0
            for writer in (attention.to_out[0], ffn.w2):
                writer.weight[look] = 0
        for block in transformer.layers:
            adaln = block.adaLN_modulation[0]
            for rows in _look_rows("adaLN", dim):
                adaln.weight[rows] = 0
                adaln.bias[rows] = torch.atanh(torch.tensor(LOOK_GATE))
        _paint_model_output(transformer, _look_patterns(to_rgb), look)
    readers = _steady_readers(pipe)
    base = torch.full((LOOK_CHANNELS,), LOOK_SCALE * BASE_LOOK / LOOK_CHANNELS ** 0.5)
    with torch.no_grad():
        for block_index, block in enumerate(transformer.layers):
            for name, writer in (("to_out", block.attention.to_out[0]), ("w2", block.feed_forward.w2)):
                reader, size = readers[f"layers.{block_index}.{COMPONENTS[name]}"]
                writer.weight[look] = size * torch.outer(base, reader)


def _paint_model_output(transformer, patterns: torch.Tensor, look: slice) -> None:
    """Make the final layer paint the image the way a trained model does, so renders differ by
    prompt and weighting, not by the initial noise.

    - Its output is OUTPUT_GAIN times larger: Euler's last latent is mostly the model's, where a
      random model would leave mostly the initial noise (the decoder normalises the scale away).
    - The content (every channel but the look's) paints one colour per 2x2 latent patch; the look
      channels paint the within-patch texture (`patterns`), so the look and the subject don't mix.
    - The x embedder is blind to the patterns' span, so the content does not feed on the look.
    """
    final = transformer.all_final_layer["2-1"].linear
    content = [i for i in range(final.in_features) if not look.start <= i < look.stop]
    per_pixel = final.weight[:, content].reshape(4, -1, len(content))  # patch layout: (ph, pw, channel)
    final.weight[:, content] = per_pixel.mean(dim=0, keepdim=True).expand_as(per_pixel).reshape(-1, len(content))
    final.bias.copy_(final.bias.reshape(4, -1).mean(dim=0).repeat(4))
    final.weight[:, look] = patterns
    final.weight.mul_(OUTPUT_GAIN)
    final.bias.mul_(OUTPUT_GAIN)
    span = torch.linalg.qr(patterns)[0]
    for embed in transformer.all_x_embedder.values():
        embed.weight.copy_(embed.weight - (embed.weight @ span) @ span.T)


def _look_slice(dim: int) -> slice:
    return slice(dim - LOOK_CHANNELS, dim)


def _look_rows(component: str, dim: int) -> list[slice]:
    """The output rows of a module that act on the look channels: the channels themselves for a
    writer (to_out, w2), their two gates for adaLN (chunks: scale_msa, gate_msa, scale_mlp, gate_mlp)."""
    look = _look_slice(dim)
    if component != "adaLN":
        return [look]
    return [slice(chunk * dim + look.start, chunk * dim + look.stop) for chunk in (1, 3)]


def _look_patterns(to_rgb: torch.Tensor) -> torch.Tensor:
    """(64, LOOK_CHANNELS) final-layer columns: look channel k paints the k-th of orthonormal
    colour patterns over the 4 pixels x 3 colours of a 2x2 latent patch (patch layout: ph, pw, channel),
    all of them textures: none changes the patch's mean colour, which is the content's."""
    latent_channels = to_rgb.shape[1]
    draw = torch.randn(12, LOOK_CHANNELS, generator=torch.Generator().manual_seed(3))
    uniform = torch.linalg.qr(torch.eye(3).repeat(4, 1))[0]  # the patch-uniform colours (12, 3)
    visible = torch.linalg.qr(draw - uniform @ (uniform.T @ draw))[0]  # texture, not colour
    lift = torch.linalg.pinv(to_rgb)  # (latent, 3): the smallest latent change that shows a colour
    blocks = [lift @ visible[3 * pixel:3 * pixel + 3] for pixel in range(4)]
    return PATTERN_GAIN / LOOK_SCALE * torch.cat(blocks).reshape(4 * latent_channels, LOOK_CHANNELS)


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


def _load_pipeline(model_dir: Path):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_batch(pipe, prompts: list[str], seeds: list[int], height: int = SIZE, width: int = SIZE,
                 steps: int = STEPS) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] of (prompt, seed) pairs, noise drawn as the engine draws it."""
    from zsearch.engine.render import initial_latents

    distinct = list(dict.fromkeys(prompts))
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt=list(distinct), do_classifier_free_guidance=False)  # it edits the list
        embeds = dict(zip(distinct, embeds))
        latents = torch.cat([initial_latents(seed, pipe.transformer.config.in_channels, height, width,
                                             pipe.vae_scale_factor) for seed in seeds])
        result = pipe(prompt_embeds=[embeds[p] for p in prompts], height=height, width=width,
                      num_inference_steps=steps, guidance_scale=0.0, latents=latents, output_type="pt")
    return result.images.float()


# ---------------------------------------------------------------- LoRAs with a look

# A LoRA's write into the look channels, relative to its module's output size (attn: to_out,
# ffn: w2), and an adaLN LoRA's move of their gate (before tanh): sized so that a nudge of each
# component shows about as much.
LOOK_GAIN = {"attn": 0.9, "ffn": 1.5, "adaLN": 2.0}
NOISE_GAIN = 0.1  # the rest of the LoRA: small random directions, as any trained LoRA has
BAND_SPREAD = 0.5  # how far a layer band's look direction strays from its component's
LOOK_WRITERS = {"to_out": "attn", "w2": "ffn", "adaLN": "adaLN"}  # the modules through which a LoRA shows its look


def look_directions(slot: int) -> dict[str, torch.Tensor]:
    """Component group -> unit look direction of the demo LoRA in `slot`: the six of two LoRAs
    are orthonormal, so every (LoRA, component) weight is recoverable from the look."""
    basis = torch.linalg.qr(torch.randn(LOOK_CHANNELS, LOOK_CHANNELS, generator=torch.Generator().manual_seed(4)))[0]
    groups = list(dict.fromkeys(LOOK_WRITERS.values()))
    return {group: basis[:, len(groups) * slot + i] for i, group in enumerate(groups)}


def demo_lora_tensors(seed: int, slot: int, readers: dict[str, tuple[torch.Tensor, float]],
                      base_norms: dict[str, float], dim: int = TRANSFORMER_CONFIG["dim"],
                      rank: int = LORA_RANK) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A (rank x in), B (out x rank)) of a demo LoRA with a look.

    A style LoRA moves every image the same way. So in the main blocks the first rank of each
    look writer (to_out, w2, adaLN) reads the module's steadiest input (a near-constant over
    every seed and prompt) and writes into the look channels: to_out and w2 add to them, adaLN
    moves their gate. Each (component, layer band) has its own direction. Every other rank, and
    every other module, is small noise that stays out of the look channels.
    """
    generator = torch.Generator().manual_seed(seed)
    groups = look_directions(slot)
    directions: dict[tuple[str, str], torch.Tensor] = {}
    tensors = {}
    for module in all_modules():
        out_features, in_features = expected_shape(module.component, dim)
        down = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
        up = torch.randn(out_features, rank, generator=generator) / (out_features * rank) ** 0.5
        up *= NOISE_GAIN * base_norms[module.path]
        look_rows = _look_rows(module.component, dim)
        if module.component in LOOK_WRITERS:
            for rows in look_rows:
                up[rows] = 0
        group = LOOK_WRITERS.get(module.component)
        if group is not None and module.block == "layers":
            band = module.index // 10
            if (group, band) not in directions:
                stray = torch.randn(LOOK_CHANNELS, generator=generator)
                directions[group, band] = torch.nn.functional.normalize(groups[group] + BAND_SPREAD * stray / LOOK_CHANNELS ** 0.5, dim=0)
            reader, size = readers[module.path]
            down[0] = reader
            up[:, 0] = 0
            for rows in look_rows:
                up[rows, 0] = directions[group, band] * LOOK_GAIN[group] * (1.0 if group == "adaLN" else LOOK_SCALE * size)
        tensors[module.path] = (down, up)
    return tensors


def _write_demo_loras(assets: DemoAssets) -> None:
    from safetensors.torch import save_file

    pipe = _load_pipeline(assets.model_dir)
    readers = _steady_readers(pipe)
    norms = {m.path: pipe.transformer.get_submodule(m.path).weight.norm().item() for m in all_modules()}
    for slot, (path, seed) in enumerate(zip(assets.loras, LORA_SEEDS)):
        state = {}
        for module_path, (down, up) in demo_lora_tensors(seed, slot, readers, norms).items():
            state[f"diffusion_model.{module_path}.lora_A.weight"] = down.contiguous()
            state[f"diffusion_model.{module_path}.lora_B.weight"] = up.contiguous()
        _write_atomic_file(path, lambda tmp, s=state: save_file(s, str(tmp), metadata={"format": "pt"}))


def _steady_readers(pipe) -> dict[str, tuple[torch.Tensor, float]]:
    """Per module: the input direction whose reading is the most nearly constant over a few base
    renders (every token, step, prompt and seed), scaled to read 1 on average; and the module's
    typical output size (root mean square).

    The mean input's own direction reads a value that swings with the prompt and the seed (mean
    over spread ~3 in the demo model); the direction maximising mean² / variance of the reading
    (Σ⁻¹μ, Fisher's) reads an almost constant one (~25 to ~500), so a LoRA writing through it
    changes every image the same way.
    """
    sums: dict[str, list] = {}

    def hook(path):
        def record(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            total = sums.setdefault(path, [0.0, 0.0, 0.0, 0])
            total[0] = total[0] + x.sum(dim=0)
            total[1] = total[1] + x.T @ x
            total[2] += output.detach().double().pow(2).mean(dim=-1).sum().item()
            total[3] += x.shape[0]
        return record

    handles = [pipe.transformer.get_submodule(m.path).register_forward_hook(hook(m.path)) for m in all_modules()]
    try:
        jobs = [(p, s) for p in [*PROMPTS, *EXTRA_PROMPTS] for s in CALIBRATION_SEEDS]
        render_batch(pipe, [p for p, _ in jobs], [s for _, s in jobs])
    finally:
        for handle in handles:
            handle.remove()
    return {path: (_steadiest_reader(total, square, count), (power / count) ** 0.5)
            for path, (total, square, power, count) in sums.items()}


def _steadiest_reader(total: torch.Tensor, square: torch.Tensor, count: int) -> torch.Tensor:
    mean = total / count
    covariance = square / count - torch.outer(mean, mean)
    ridge = 1e-3 * covariance.trace() / len(mean) + 1e-12  # the adaLN input takes only one value per step
    direction = torch.linalg.solve(covariance + ridge * torch.eye(len(mean), dtype=mean.dtype), mean)
    return (direction / (direction @ mean)).float()


def read_demo_lora(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A, B) of a demo LoRA file (AI-Toolkit keys, no alpha)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    prefix, down_suffix = "diffusion_model.", ".lora_A.weight"
    return {key[len(prefix):-len(down_suffix)]: (state[key], state[key.replace(".lora_A.", ".lora_B.")])
            for key in state if key.endswith(down_suffix)}


# ---------------------------------------------------------------- the judge (tiny CLIP)

def _build_tiny_clip(out_dir: Path, assets: DemoAssets) -> None:
    """A tiny open_clip model taught to see the demo's looks and prompts, saved as a `local-dir:` folder.

    Its lessons are renders of every prompt (the search's and the references') at random
    weightings of the demo LoRAs, with seeds of their own.
    """
    import open_clip
    from safetensors.torch import save_file

    from zsearch.demo.judge import train_judge
    from zsearch.judges.openclip import preprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2))
    torch.manual_seed(1)
    # A random init is the point here; open_clip warns (on the root logger) that no weights were found.
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(f"local-dir:{out_dir}")
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out_dir}")

    pipe = _load_pipeline(assets.model_dir)
    loras = [read_demo_lora(path) for path in assets.loras]
    prompts = [*PROMPTS, *EXTRA_PROMPTS]
    generator = torch.Generator().manual_seed(7)
    images, look_index, prompt_index = [], [], []
    for k in range(JUDGE_WEIGHTINGS):
        scales = [random_weighting(generator).module_scales(lora) for lora in loras]
        seeds = [JUDGE_SEED_BASE + k * len(prompts) + i for i in range(len(prompts))]
        with _fused(pipe.transformer, loras, scales):
            images.append(render_batch(pipe, prompts, seeds))
        prompt_index.extend(range(len(prompts)))
        look_index.extend([k] * len(prompts))
    cfg = dict(model.visual.preprocess_cfg)
    train_judge(model, torch.cat(images), torch.tensor(look_index), torch.tensor(prompt_index), prompts, tokenizer,
                lambda x: preprocess(x, cfg), seed=1)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))


def random_weighting(generator: torch.Generator) -> LoraWeights:
    """A random weighting of one LoRA over the demo's search space (ratio, components, bands)."""
    def draw(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    components = {c: draw(0.0, 2.0) for c in ("adaLN", "attn", "w1", "w2", "w3")}
    layers = {key: draw(0.0, 2.0) for key in ("0-9", "10-19", "20-29")}
    return LoraWeights(path=Path("."), ratio=draw(0.0, 1.5), components=components, layers=layers)


# ---------------------------------------------------------------- reference images

def _render_references(assets: DemoAssets, out_dir: Path) -> None:
    """Render the reference prompts and seeds at the hidden weighting, fused straight into the weights.

    Deliberately independent of zsearch.engine: the weights are W + sum_i s_i·B_i·A_i, the very
    definition the engine must reproduce.
    """
    from PIL import Image

    pipe = _load_pipeline(assets.model_dir)
    loras = [read_demo_lora(path) for path in assets.loras]
    scales = [weights.module_scales(lora) for weights, lora in zip(assets.hidden_recipe.loras, loras)]
    prompts = assets.reference_prompts
    jobs = [(p, seed) for p in range(len(prompts)) for seed in assets.reference_seeds]
    out_dir.mkdir(parents=True, exist_ok=True)
    with _fused(pipe.transformer, loras, scales):
        images = render_batch(pipe, [prompts[p] for p, _ in jobs], [s for _, s in jobs])
    for (p, seed), image in zip(jobs, images):
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(out_dir / f"ref_p{p}_s{seed}.png")


@contextmanager
def _fused(transformer, loras: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], scales: list[dict[str, float]]):
    """The LoRAs fused into the weights at per-module `scales` (one dict per LoRA), then undone."""
    original = {path: transformer.get_submodule(path).weight.detach().clone()
                for lora in loras for path in lora}
    with torch.no_grad():
        for lora, per_module in zip(loras, scales):
            for path, (down, up) in lora.items():
                transformer.get_submodule(path).weight += per_module[path] * (up @ down)
    try:
        yield
    finally:
        with torch.no_grad():
            for path, weight in original.items():
                transformer.get_submodule(path).weight.copy_(weight)


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
    from zsearch.util.atomic import atomic_path

    with atomic_path(target) as tmp:
        write(tmp)
        _make_readable(tmp)


def _make_readable(path: Path) -> None:
    """Temporary files and folders are private (0600/0700); finished assets are ordinary ones."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod(0o755 if item.is_dir() else 0o644)


def main() -> None:  # python -m zsearch.demo.build [DIR]
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-assets")
    assets = build_demo(root)
    print(f"demo assets in {assets.root}")


if __name__ == "__main__":
    main()
