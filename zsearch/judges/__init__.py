"""Judges: small classes behind one protocol (`Judge`), chosen by name, that score renders into
named terms. The objective is a weighted sum of those terms (or, for `objective: pareto`, two or
three of them side by side).

| name      | terms           | model                                                   |
|-----------|-----------------|---------------------------------------------------------|
| clip      | style, prompt   | open_clip (the `scorer:`)                               |
| identity  | identity        | DINOv2 (the `identity:`)                                |
| aesthetic | aesthetic       | LAION aesthetic v2 head on the CLIP judge's embedding   |
| hps       | preference      | HPSv2 (open_clip ViT-H-14 tuned on human choices)       |
| csd       | style           | CSD style descriptor, in place of CLIP's style term     |

Must not import settings/, study/ or optuna: a judge scores what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from zsearch.judges.aesthetic import AestheticHead, AestheticJudge
from zsearch.judges.base import Batch, Judge, Panel
from zsearch.judges.clip import ClipJudge
from zsearch.judges.identity import IdentityJudge
from zsearch.judges.hps import PreferenceJudge
from zsearch.judges.style import CsdStyleJudge

JUDGES: dict[str, type[Judge]] = {cls.name: cls for cls in
                                  (ClipJudge, IdentityJudge, AestheticJudge, PreferenceJudge, CsdStyleJudge)}

__all__ = ["Batch", "Judge", "Panel", "JUDGES", "ClipJudge", "IdentityJudge",
           "AestheticJudge", "AestheticHead", "PreferenceJudge", "CsdStyleJudge", "build_panel"]


@dataclass
class Context:
    """What the extra judges may need besides their own spec."""

    device: torch.device
    references: Path
    clip: Optional[ClipJudge] = None
    clip_pretrained: Optional[str] = None


def build_extra(spec, context: Context) -> Judge:
    """One extra judge from its config entry (anything with .name, .model and .checkpoint)."""
    if spec.name == "aesthetic":
        if context.clip is None:
            raise ValueError("the aesthetic judge reads the CLIP judge's embedding")
        return AestheticJudge.load(context.clip, spec.checkpoint, pretrained_tag=context.clip_pretrained)
    if spec.name == "hps":
        return PreferenceJudge.load(spec.model, spec.checkpoint, device=context.device)
    if spec.name == "csd":
        return CsdStyleJudge.load(context.references, spec.checkpoint, spec.model, device=context.device)
    raise ValueError(f"unknown judge {spec.name}")


def build_panel(clip_scorer, identity_scorer=None, extra=(), references: Path | None = None,
                clip_pretrained: Optional[str] = None) -> Panel:
    """The CLIP judge (without `style` when a csd judge takes that term), DINOv2 if given, the extras."""
    takes_style = any(spec.name == "csd" for spec in extra)
    clip = ClipJudge(clip_scorer, ("prompt",) if takes_style else ("style", "prompt"))
    judges: list[Judge] = [clip]
    if identity_scorer is not None:
        judges.append(IdentityJudge(identity_scorer))
    context = Context(clip_scorer.device, Path(references) if references else Path("."), clip, clip_pretrained)
    judges.extend(build_extra(spec, context) for spec in extra)
    return Panel(judges)
