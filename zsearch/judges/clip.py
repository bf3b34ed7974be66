"""The CLIP judge: likeness to the reference images (`style`) and to the prompt (`prompt`).

A wrapper around `judges.openclip.Scorer`; its image embedding is shared through the batch, so
the aesthetic head (and anything else reading CLIP's image space) costs no second forward.
"""

from __future__ import annotations

import torch

from zsearch.judges.openclip import Scorer
from zsearch.judges.base import Batch, Judge

IMAGE_EMBEDDING = "clip_image"  # the batch key of the unit-length CLIP image embeddings


class ClipJudge(Judge):
    name = "clip"

    def __init__(self, scorer: Scorer, terms: tuple[str, ...] = ("style", "prompt")):
        unknown = set(terms) - {"style", "prompt"}
        if unknown or not terms:
            raise ValueError(f"the CLIP judge gives style and/or prompt, not {sorted(unknown) or 'nothing'}")
        self.scorer = scorer
        self.terms = tuple(terms)

    def image_embeddings(self, batch: Batch) -> torch.Tensor:
        return batch.once(IMAGE_EMBEDDING, lambda: self.scorer.embed_images(batch.images))

    @torch.no_grad()
    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        features = self.image_embeddings(batch)
        out = {}
        if "style" in self.terms:
            out["style"] = self.scorer.style_of(features)
        if "prompt" in self.terms:
            out["prompt"] = self.scorer.prompt_of(features, batch.prompts)
        return out

    def describe(self) -> dict:
        return {**super().describe(), "style_mode": self.scorer.style}
