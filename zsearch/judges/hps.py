"""The human-preference judge: HPSv2 (`preference`), an open_clip ViT-H-14 fine-tuned on human
choices between generated images for the same prompt (tgxs002/HPSv2).

Its checkpoint (HPS_v2_compressed.pt / HPS_v2.1_compressed.pt on the hub repo xswu/HPSv2) is a
`{"state_dict": ...}` of the whole open_clip model; the score is the cosine of the render's and
its prompt's embeddings, as HPSv2 computes it (typically 0.2-0.35 for real images).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from zsearch.engine.device import pick_device
from zsearch.judges.openclip import embed_texts_once, preprocess
from zsearch.judges.base import Batch, Judge
from zsearch.judges.weights import build_open_clip, load_exactly, read_state_dict, resolve_file

DEFAULT_MODEL = "ViT-H-14"
DEFAULT_CHECKPOINT = "hf-hub:xswu/HPSv2/HPS_v2.1_compressed.pt"


class PreferenceJudge(Judge):
    name = "hps"
    terms = ("preference",)

    def __init__(self, model, tokenizer, device: torch.device, source: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.preprocess_cfg = dict(model.visual.preprocess_cfg)
        self.source = source
        self._text: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, model: str | None = None, checkpoint: str | None = None, device=None) -> "PreferenceJudge":
        """`model`: the open_clip architecture (a name, or `local-dir:` for its config); `checkpoint`:
        the HPSv2 weights, a local file or hf-hub:owner/repo/file."""
        import open_clip

        device = device if isinstance(device, torch.device) else pick_device(device)
        arch = model or DEFAULT_MODEL
        spec = checkpoint or DEFAULT_CHECKPOINT
        path = resolve_file(spec, "HPSv2 checkpoint")  # before the (slow) model build
        net = build_open_clip(arch, "HPSv2")
        load_exactly(net, read_state_dict(path, "HPSv2 checkpoint"), "HPSv2 checkpoint", path)
        return cls(net.to(device).eval(), open_clip.get_tokenizer(arch), device, source=spec)

    @torch.no_grad()
    def score(self, batch: Batch) -> dict[str, torch.Tensor]:
        pixels = preprocess(batch.images.to(self.device, torch.float32), self.preprocess_cfg)
        image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        return {"preference": (image * self._texts(batch.prompts)).sum(dim=1).float()}

    def _texts(self, prompts: list[str]) -> torch.Tensor:
        return embed_texts_once(self.model, self.tokenizer, self.device, self._text, prompts)

    def describe(self) -> dict:
        return {**super().describe(), "checkpoint": self.source}
