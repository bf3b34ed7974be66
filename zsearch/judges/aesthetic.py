"""The aesthetic judge: the LAION aesthetic predictor v2 on CLIP's image embedding (`aesthetic`).

The head (christophschuhmann/improved-aesthetic-predictor, e.g. sac+logos+ava1-l14-linearMSE) is
five linear layers with dropout between them and no activation, trained on *unit-length* OpenAI
CLIP ViT-L/14 image embeddings (768-d); its output is a mean rating on a 1-10 scale. It reads the
embedding the CLIP judge already computed for the batch, so it adds no image forward at all; the
CLIP judge must therefore run a ViT-L/14 (`scorer: {model: ViT-L-14, pretrained: openai}` is the
space it was trained in).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from zsearch.errors import UserError
from zsearch.judges.base import Batch, Judge
from zsearch.judges.clip import ClipJudge
from zsearch.judges.weights import load_exactly, read_state_dict, resolve_file

# TRL's copy of sac+logos+ava1-l14-linearMSE (the same MLP, the same keys)
DEFAULT_HEAD = "hf-hub:trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"
HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)
log = logging.getLogger("zsearch")


class AestheticHead(nn.Module):
    """The improved-aesthetic-predictor MLP; keys layers.{0,2,4,6,7}.{weight,bias} as released."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        h = HIDDEN
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, h[0]), nn.Dropout(DROPOUT[0]),
            nn.Linear(h[0], h[1]), nn.Dropout(DROPOUT[1]),
            nn.Linear(h[1], h[2]), nn.Dropout(DROPOUT[2]),
            nn.Linear(h[2], h[3]),
            nn.Linear(h[3], 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)

    @classmethod
    def load(cls, spec: str) -> "AestheticHead":
        path = resolve_file(spec, "aesthetic head")
        state = read_state_dict(path, "aesthetic head")
        first = state.get("layers.0.weight")
        if first is None or first.ndim != 2:
            raise UserError(f"aesthetic head '{path}' has no layers.0.weight; give the improved-aesthetic-"
                            f"predictor weights (e.g. sac+logos+ava1-l14-linearMSE.pth)")
        head = cls(int(first.shape[1]))
        load_exactly(head, state, "aesthetic head", path)
        return head.eval()


class AestheticJudge(Judge):
    name = "aesthetic"
    terms = ("aesthetic",)

    def __init__(self, head: AestheticHead, clip: ClipJudge, source: str = ""):
        dim = _embedding_dim(clip)
        if dim is not None and dim != head.input_size:
            raise UserError(f"aesthetic head takes {head.input_size}-d CLIP embeddings but the scorer's model "
                            f"gives {dim}-d; use scorer: {{model: ViT-L-14, pretrained: openai}}")
        self.head = head.to(clip.scorer.device)
        self.clip = clip
        self.source = source

    @classmethod
    def load(cls, clip: ClipJudge, head: str | None = None, pretrained_tag: str | None = None) -> "AestheticJudge":
        spec = head or DEFAULT_HEAD
        if pretrained_tag not in (None, "openai"):
            log.warning("aesthetic judge: the LAION head was trained on OpenAI ViT-L/14 embeddings; with "
                        "pretrained '%s' its ratings are uncalibrated", pretrained_tag)
        return cls(AestheticHead.load(spec), clip, source=spec)

    @torch.no_grad()
    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        embeddings = self.clip.image_embeddings(batch)  # unit length, shared with the CLIP judge
        return {"aesthetic": self.head(embeddings.float()).float()}

    def describe(self) -> dict:
        return {**super().describe(), "head": self.source}


def _embedding_dim(clip: ClipJudge):
    embeddings = getattr(clip.scorer, "reference_embeddings", None)
    return int(embeddings.shape[-1]) if embeddings is not None else None


def save_head(head: AestheticHead, path: Path) -> Path:
    """Write a head's weights as safetensors (the tiny demo head, or a converted .pth)."""
    from safetensors.torch import save_file

    from zsearch.util.atomic import atomic_path
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp))
    return Path(path)
