"""`render.compile`: regional compilation of the transformer's repeated blocks, and when it pays.

`compile_blocks` compiles each ZImageTransformerBlock with torch.compile (diffusers'
`compile_repeated_blocks`): every block runs the same code, so the blocks share their graphs and
the warm-up is that of a few blocks, not of the whole model. The side path's scales are tensor
data read from each Linear (see weighting.SidePath), so a new weighting never recompiles; only a
new input shape does (a prompt of another length), once, during the first trial.
"""

from __future__ import annotations

import weakref

import torch

from zsearch.errors import UserError

SETTINGS = ("auto", "true", "false")

# What `auto` weighs, per 1024² 8-step image on a CUDA GPU. Estimates until bench/gpu.sh measures
# them: eager renders take 0.8-1 s, a compiled denoise of another DiT engine went from 1.36 s to
# 0.74 s, and regional compilation of Z-Image's block costs about a minute.
WARMUP_SECONDS = 60.0
SAVED_SECONDS_PER_IMAGE = 0.25
PAYBACK = 2.0  # compile only when the night saves at least twice the warm-up
REFERENCE_WORK = 8 * 1024 * 1024  # steps x pixels of the image the figures above are for
EAGER_SECONDS_PER_IMAGE = 0.9  # bounds what a night limited by `search.hours` can render


def planned_images(trials_left: int, jobs_per_trial: int, hours: float | None = None) -> int:
    """The images a run expects to render: its trials left, or what its hours allow if fewer."""
    images = max(0, trials_left) * jobs_per_trial
    if hours is not None:
        images = min(images, int(hours * 3600 / EAGER_SECONDS_PER_IMAGE))
    return images


def normalise(setting: str | bool) -> str:
    """YAML reads `compile: true` as a bool; "true"/"false"/"auto" as strings: one form."""
    if isinstance(setting, bool):
        return "true" if setting else "false"
    if setting not in SETTINGS:
        raise UserError(f"render.compile '{setting}' is unknown; use auto, true or false")
    return setting


def decide_compile(setting: str | bool, device_type: str, planned_images: int, steps: int = 8,
                   width: int = 1024, height: int = 1024, memory: str = "full") -> tuple[bool, str]:
    """Whether to compile, and why, as one phrase for the terminal.

    true/false are obeyed (compiling works on the CPU too, it just rarely pays there), except
    true with fp8 storage, which is refused: layerwise casting breaks the graph at every Linear.
    `auto`
    compiles on CUDA only, with the weights held whole on the GPU (memory "full"), and only when
    the planned images save at least PAYBACK x the warm-up:
    planned_images x SAVED_SECONDS_PER_IMAGE x (steps x pixels / 8 x 1024²) >= PAYBACK x WARMUP_SECONDS.
    """
    setting = normalise(setting)
    if setting == "true" and memory == "fp8":
        raise UserError("render.compile true cannot speed up render.memory fp8 (its casting breaks the graph at "
                        "every Linear); use compile: auto or false, or memory: full or offload")
    if setting != "auto":
        return setting == "true", "compiled (as set)" if setting == "true" else "not compiled (as set)"
    if device_type != "cuda":
        return False, f"not compiled (render.compile auto compiles on CUDA only, this is {device_type})"
    if memory != "full":
        return False, f"not compiled (render.compile auto does not compile with memory: {memory})"
    saved = planned_images * SAVED_SECONDS_PER_IMAGE * steps * width * height / REFERENCE_WORK
    if saved < PAYBACK * WARMUP_SECONDS:
        return False, (f"not compiled ({planned_images} planned images would save ~{saved:.0f} s, under "
                       f"{PAYBACK:g}x the ~{WARMUP_SECONDS:.0f} s warm-up)")
    return True, f"compiled ({planned_images} planned images save ~{saved / 60:.0f} min for a ~1 min warm-up)"


def _repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock
    return [m for m in transformer.modules() if isinstance(m, ZImageTransformerBlock)]


_COMPILED: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # blocks compile_blocks compiled


def compile_blocks(transformer: torch.nn.Module, **options) -> None:
    """Compile every repeated block of `transformer` in place (lazily: the first forward compiles).

    `options` go to torch.compile (a test passes a cheaper backend). No fullgraph: a graph break
    in a future diffusers block should cost speed, not the night. Each block is compiled with
    `nn.Module.compile`, as diffusers' `compile_repeated_blocks` does for this model.
    """
    for block in _repeated_blocks(transformer):
        block.compile(**options)
        _COMPILED.add(block)


def is_compiled(transformer: torch.nn.Module) -> bool:
    """Whether every repeated block was compiled by compile_blocks."""
    blocks = _repeated_blocks(transformer)
    return bool(blocks) and all(b in _COMPILED for b in blocks)
