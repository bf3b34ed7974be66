"""The CSD style judge: Contrastive Style Descriptors (learn2phoenix/CSD) for the `style` term.

CSD is OpenAI's CLIP ViT-L/14 image tower fine-tuned so that one projection of its pooled feature
(`last_layer_style`, 1024x768) describes style while another describes content. Scoring the
`style` term with it rewards a render for the references' look rather than for their content,
which plain CLIP similarity mixes in. The checkpoint is CSD's own (`model_state_dict` with
`module.backbone.*`, `module.last_layer_style`, ... keys) or the same keys in a safetensors file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from zsearch.errors import UserError
from zsearch.engine.device import pick_device
from zsearch.judges.images import read_image, reference_files
from zsearch.judges.openclip import preprocess
from zsearch.judges.base import Batch, Judge
from zsearch.judges.weights import build_open_clip, load_exactly, read_state_dict, resolve_file

DEFAULT_MODEL = "ViT-L-14-quickgelu"  # OpenAI's ViT-L/14 (QuickGELU), the backbone CSD was tuned from
HOW_TO_GET = "download CSD's checkpoint (github.com/learn2phoenix/CSD, 'checkpoint.pth') and set `checkpoint:`"


class CsdStyleJudge(Judge):
    name = "csd"
    terms = ("style",)

    def __init__(self, backbone, style_projection: torch.Tensor, references: torch.Tensor, device: torch.device,
                 source: str = ""):
        self.backbone = backbone
        self.style_projection = style_projection.to(device)  # (width, style dim)
        self.device = device
        self.preprocess_cfg = dict(backbone.preprocess_cfg)
        self.reference_embeddings = references.to(device)  # (R, D) unit length
        self.centroid = F.normalize(self.reference_embeddings.mean(dim=0), dim=0)
        self.source = source

    @classmethod
    def load(cls, references: Path, checkpoint: str | None, model: str | None = None, device=None) -> "CsdStyleJudge":
        if not checkpoint:
            raise UserError(f"the csd judge needs `checkpoint:`; {HOW_TO_GET}")
        device = device if isinstance(device, torch.device) else pick_device(device)
        files = reference_files(Path(references))
        path = resolve_file(checkpoint, "CSD checkpoint")
        state = read_state_dict(path, "CSD checkpoint")
        projection = state.get("last_layer_style")
        if projection is None or projection.ndim != 2:
            raise UserError(f"CSD checkpoint '{path}' has no last_layer_style; {HOW_TO_GET}")
        arch = model or DEFAULT_MODEL
        backbone = build_open_clip(arch, "CSD").visual
        backbone.proj = None  # CSD's heads replace CLIP's projection
        load_exactly(backbone, {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")},
                     "CSD checkpoint", path)
        backbone = backbone.to(device).eval()
        judge = cls(backbone, projection.float(), torch.zeros(1, projection.shape[1]), device, source=checkpoint)
        refs = torch.cat([judge.embed(read_image(f).unsqueeze(0)) for f in files])
        judge.reference_embeddings = refs
        judge.centroid = F.normalize(refs.mean(dim=0), dim=0)
        return judge

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length CSD style embeddings (N, D) of images (N, 3, H, W) in [0, 1]."""
        pixels = preprocess(images.to(self.device, torch.float32), self.preprocess_cfg)
        feature = self.backbone(pixels).float()
        return F.normalize(feature @ self.style_projection, dim=-1)

    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"style": (self.embed(batch.images) @ self.centroid).float().clamp(-1, 1)}

    def describe(self) -> dict:
        return {**super().describe(), "checkpoint": self.source}
