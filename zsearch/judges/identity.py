"""The identity judge: DINOv2 likeness of a render to a subject's reference images (`identity`)."""

from __future__ import annotations

import torch

from zsearch.judges.dino import DinoScorer
from zsearch.judges.base import Batch, Judge


class IdentityJudge(Judge):
    name = "identity"
    terms = ("identity",)

    def __init__(self, scorer: DinoScorer):
        self.scorer = scorer

    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.scorer.score(batch.images)

    def describe(self) -> dict:
        return {**super().describe(), "model": self.scorer.name}
