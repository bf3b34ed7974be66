"""The demo's tiny Z-Image pipeline: the real classes, small, with look channels that LoRAs move."""

from __future__ import annotations

from pathlib import Path

import torch

from zsearch.lora.blocks import COMPONENTS, all_modules
from zsearch.demo.files import build_once
from zsearch.demo.spec import (CALIBRATION_SEEDS, CHAT_TEMPLATE, EXTRA_PROMPTS, PROMPTS, SIZE, STEPS, TEXT_HIDDEN,
                               TRANSFORMER_CONFIG)


def build_tiny_pipeline(out_dir: Path) -> Path:
    """Save a tiny random ZImagePipeline to `out_dir` (skipped when already there)."""
    out_dir = Path(out_dir)
    build_once(out_dir, _save_tiny_pipeline)
    return out_dir


def _save_tiny_pipeline(out_dir: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tiny_tokenizer()
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
            for rows in look_rows("adaLN", dim):
                adaln.weight[rows] = 0
                adaln.bias[rows] = torch.atanh(torch.tensor(LOOK_GATE))
        _paint_model_output(transformer, _look_patterns(to_rgb), look)
    readers = steady_readers(pipe)
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


def look_rows(component: str, dim: int) -> list[slice]:
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


def tiny_tokenizer():
    """A byte-level BPE tokenizer of the Qwen2 class with Qwen's special tokens and chat template."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=1024)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_pipeline(model_dir: Path):
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


def steady_readers(pipe) -> dict[str, tuple[torch.Tensor, float]]:
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
