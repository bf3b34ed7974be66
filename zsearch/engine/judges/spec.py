"""How a config names an extra judge (`judges:`); kept free of model imports so config.py can use it."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

EXTRA_JUDGES = ("aesthetic", "hps", "csd")


class JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["aesthetic", "hps", "csd"]
    weight: float = 1.0  # its term's weight in the objective (csd: replaces `objective.style`)
    model: Optional[str] = None  # open_clip architecture or local-dir: (hps, csd)
    checkpoint: Optional[str] = None  # a local file or hf-hub:owner/repo/file (default per judge)
