"""The demo's LoRAs: each component and layer band pushes the image's look in its own direction."""

from __future__ import annotations

from pathlib import Path

import torch

from zsearch.lora.blocks import all_modules, expected_shape
from zsearch.demo.files import write_atomic_file
from zsearch.demo.pipeline import LOOK_CHANNELS, LOOK_SCALE, load_pipeline, look_rows, steady_readers
from zsearch.demo.spec import DemoAssets, LORA_RANK, LORA_SEEDS, TRANSFORMER_CONFIG


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
        own_look_rows = look_rows(module.component, dim)
        if module.component in LOOK_WRITERS:
            for rows in own_look_rows:
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
            for rows in own_look_rows:
                up[rows, 0] = directions[group, band] * LOOK_GAIN[group] * (1.0 if group == "adaLN" else LOOK_SCALE * size)
        tensors[module.path] = (down, up)
    return tensors


def write_demo_loras(assets: DemoAssets) -> None:
    from safetensors.torch import save_file

    pipe = load_pipeline(assets.model_dir)
    readers = steady_readers(pipe)
    norms = {m.path: pipe.transformer.get_submodule(m.path).weight.norm().item() for m in all_modules()}
    for slot, (path, seed) in enumerate(zip(assets.loras, LORA_SEEDS)):
        state = {}
        for module_path, (down, up) in demo_lora_tensors(seed, slot, readers, norms).items():
            state[f"diffusion_model.{module_path}.lora_A.weight"] = down.contiguous()
            state[f"diffusion_model.{module_path}.lora_B.weight"] = up.contiguous()
        write_atomic_file(path, lambda tmp, s=state: save_file(s, str(tmp), metadata={"format": "pt"}))


def read_demo_lora(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (A, B) of a demo LoRA file (AI-Toolkit keys, no alpha)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    prefix, down_suffix = "diffusion_model.", ".lora_A.weight"
    return {key[len(prefix):-len(down_suffix)]: (state[key], state[key.replace(".lora_A.", ".lora_B.")])
            for key in state if key.endswith(down_suffix)}
