"""What the demo is made of: sizes, seeds, prompts, the hidden weighting, the tiny CLIP's shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


def demo_assets(root: Path) -> DemoAssets:
    loras = [root / "loras" / "demo_style_a.safetensors", root / "loras" / "demo_style_b.safetensors"]
    recipe = Recipe(
        loras=[LoraWeights(path=path, **weights) for path, weights in zip(loras, HIDDEN_WEIGHTS)],
        info={"note": "hidden weighting the demo references were rendered at"},
    )
    return DemoAssets(root=root, model_dir=root / "tiny-z-image", clip_dir=root / "tiny-clip", loras=loras,
                      references=root / "references", prompts=root / "prompts.txt", hidden_recipe=recipe)
