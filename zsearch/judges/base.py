"""The Judge protocol: a judge scores a batch of renders (with their prompts) into named terms.

Each judge is a small class with a `name` (how a config chooses it) and the `terms` it produces;
`score(batch)` returns {term: (N,) float tensor}. Judges that read the same embedding share it
through the batch (`Batch.once`), so e.g. the aesthetic head costs no second CLIP forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch


@dataclass
class Batch:
    """The renders of one batch, their prompts, and what judges computed for it (shared)."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    prompts: list[str]
    _shared: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if len(self.prompts) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.prompts)} prompts")

    def once(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`compute()` the first time `key` is asked for in this batch, the same tensor after."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


class Judge(ABC):
    """Scores renders into named terms; subclasses set `name` and `terms`."""

    name: ClassVar[str]
    terms: tuple[str, ...]

    @abstractmethod
    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{term: (N,) float32} for every term in `self.terms`."""

    def describe(self) -> dict:
        """What the provenance and the report say about this judge."""
        return {"judge": self.name, "terms": list(self.terms)}


class Panel:
    """Several judges scoring the same batch; every term comes from exactly one judge."""

    def __init__(self, judges: list[Judge]):
        seen: dict[str, str] = {}
        for judge in judges:
            for term in judge.terms:
                if term in seen:
                    raise ValueError(f"term '{term}' is produced by both {seen[term]} and {judge.name}")
                seen[term] = judge.name
        self.judges = list(judges)

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(t for judge in self.judges for t in judge.terms)

    def score(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        batch = Batch(images, list(prompts))
        out: dict[str, torch.Tensor] = {}
        for judge in self.judges:
            scores = judge.score(batch)
            for term in judge.terms:
                out[term] = scores[term].float().reshape(-1)
        return out

    def describe(self) -> list[dict]:
        return [judge.describe() for judge in self.judges]
