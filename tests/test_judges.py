"""The judges: each new judge against an independent computation on tiny random models of the
real classes, the shared CLIP embedding, tensors-only checkpoint reading, and the errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from search_helpers import DEMO_CLIP_WIDTH
from zsearch.settings.schema import JudgeEntry as JudgeSpec
from zsearch.judges import (AestheticHead, AestheticJudge, Batch, ClipJudge, CsdStyleJudge, Panel,
                                   PreferenceJudge, build_panel)
from tiny_judges import build_tiny_aesthetic, build_tiny_csd, build_tiny_hps
from zsearch.judges.weights import read_state_dict
from zsearch.judges.images import read_image
from zsearch.judges.openclip import Scorer, preprocess
from zsearch.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


def quantised(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Images that survive a PNG/PIL round trip exactly (multiples of 1/255)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def save(image: torch.Tensor, path):
    Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(path)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    for i, image in enumerate(quantised(3, seed=5, size=40)):
        save(image, folder / f"r{i}.png")
    return folder


@pytest.fixture(scope="module")
def clip_scorer(demo_assets, refs):
    return Scorer.load(demo_assets.clip_model, None, refs, device="cpu")


# ---------------------------------------------------------------- aesthetic

def test_aesthetic_head_has_the_released_layout():
    keys = {k: tuple(v.shape) for k, v in AestheticHead(768).state_dict().items()}
    assert keys == {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
                    "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
                    "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
                    "layers.7.bias": (1,)}


def test_aesthetic_is_the_mlp_on_the_shared_unit_clip_embedding(clip_scorer, tmp_path):
    head_file = build_tiny_aesthetic(tmp_path / "head.safetensors", input_size=DEMO_CLIP_WIDTH)
    clip = ClipJudge(clip_scorer)
    judge = AestheticJudge(AestheticHead.load(str(head_file)), clip)
    images = quantised(4, seed=1, size=48)

    calls = []
    encode = clip_scorer.model.encode_image
    clip_scorer.model.encode_image = lambda x, **kw: calls.append(len(x)) or encode(x, **kw)
    try:
        scores = Panel([clip, judge]).score(images, ["a fox"] * 4)
    finally:
        clip_scorer.model.encode_image = encode
    assert calls == [4]  # one CLIP forward for both judges

    # independently: the released MLP (plain Linear layers, no activation) on the unit embedding
    with torch.no_grad():
        embedding = F.normalize(encode(preprocess(images, dict(clip_scorer.model.visual.preprocess_cfg))), dim=-1)
        from safetensors.torch import load_file
        w = load_file(str(head_file))
        x = embedding
        for i in (0, 2, 4, 6, 7):
            x = x @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]
    assert torch.allclose(scores["aesthetic"], x.squeeze(-1), atol=1e-5)
    assert set(scores) == {"style", "prompt", "aesthetic"}


def test_aesthetic_reads_a_torch_state_dict_like_the_released_pth(clip_scorer, tmp_path):
    torch.manual_seed(3)
    head = AestheticHead(32)
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    loaded = AestheticHead.load(str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"))
    x = F.normalize(torch.randn(3, 32), dim=-1)
    assert torch.allclose(loaded(x), head.eval()(x))


def test_aesthetic_refuses_an_embedding_of_another_width(clip_scorer, tmp_path):
    head = AestheticHead.load(str(build_tiny_aesthetic(tmp_path / "h768.safetensors", input_size=768)))
    with pytest.raises(UserError, match=f"768-d CLIP embeddings but the scorer's model gives {DEMO_CLIP_WIDTH}-d"):
        AestheticJudge(head, ClipJudge(clip_scorer))


# ---------------------------------------------------------------- HPSv2

def test_hps_is_open_clip_cosine_of_image_and_prompt(tmp_path):
    model_name, checkpoint = build_tiny_hps(tmp_path)
    judge = PreferenceJudge.load(model_name, str(checkpoint), device="cpu")
    images = quantised(3, seed=2)
    prompts = ["a red fox", "a lighthouse at dusk", "a red fox"]
    scores = judge.score(Batch(images, prompts))["preference"]

    # independently, as HPSv2's score.py does: the model's forward on open_clip's own transforms
    model, _, transform = open_clip.create_model_and_transforms(model_name, load_weights=False, output_dict=True)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    model.eval()
    pixels = torch.stack([transform(Image.fromarray((im * 255).round().byte().permute(1, 2, 0).numpy()))
                          for im in images])
    with torch.no_grad():
        out = model(pixels, open_clip.get_tokenizer(model_name)(prompts))
        expected = torch.diagonal(out["image_features"] @ out["text_features"].T)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores[0] != pytest.approx(float(scores[1]))


def test_hps_checkpoint_for_another_architecture_is_refused(tmp_path):
    _, checkpoint = build_tiny_hps(tmp_path)
    with pytest.raises(UserError, match="does not fit the model"):
        PreferenceJudge.load("RN50", str(checkpoint), device="cpu")


# ---------------------------------------------------------------- CSD

def _csd_expected(model_name, state, images, ref_images):
    visual = open_clip.create_model(model_name, load_weights=False).visual
    visual.proj = None
    visual.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    visual.eval()
    cfg = dict(visual.preprocess_cfg)
    with torch.no_grad():
        def embed(x):
            return F.normalize(visual(preprocess(x, cfg)) @ state["last_layer_style"], dim=-1)
        centroid = F.normalize(torch.cat([embed(r.unsqueeze(0)) for r in ref_images]).mean(0), dim=0)
        return embed(images) @ centroid


@pytest.mark.parametrize("safetensors", [False, True])
def test_csd_style_is_the_style_head_cosine_to_the_references(tmp_path, refs, safetensors):
    model_name, checkpoint = build_tiny_csd(tmp_path, safetensors=safetensors)
    judge = CsdStyleJudge.load(refs, str(checkpoint), model_name, device="cpu")
    images = quantised(3, seed=4, size=36)
    got = judge.score(Batch(images, ["x"] * 3))["style"]
    state = read_state_dict(checkpoint, "csd")
    ref_images = [read_image(p) for p in sorted(refs.glob("*.png"))]
    assert torch.allclose(got, _csd_expected(model_name, state, images, ref_images), atol=1e-5)
    # the (independent) expectation never reads the content head; the style head matters
    judge.style_projection = judge.style_projection.flip(0)
    assert not torch.allclose(judge.score(Batch(images, ["x"] * 3))["style"], got, atol=1e-3)


def test_csd_takes_the_style_term_from_clip(clip_scorer, tmp_path, refs):
    model_name, checkpoint = build_tiny_csd(tmp_path)
    panel = build_panel(clip_scorer, extra=[JudgeSpec(name="csd", model=model_name, checkpoint=str(checkpoint))],
                        references=refs)
    assert panel.terms == ("prompt", "style")
    scores = panel.score(quantised(2, seed=6), ["a", "b"])
    csd = next(j for j in panel.judges if j.name == "csd")
    assert torch.allclose(scores["style"], csd.score(Batch(quantised(2, seed=6), ["a", "b"]))["style"])


def test_csd_needs_a_checkpoint(refs):
    with pytest.raises(UserError, match="csd judge needs `checkpoint:`"):
        CsdStyleJudge.load(refs, None)


# ---------------------------------------------------------------- reading weights safely

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran.txt"
    torch.save({"state_dict": {"layers.0.weight": torch.zeros(2, 2)}, "extra": _Payload(marker)},
               tmp_path / "evil.pth")
    with pytest.raises(UserError, match="holds objects other than tensors"):
        AestheticHead.load(str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_missing_and_offline_hub_files_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="'nope.pth' not found"):
        AestheticHead.load("nope.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set.*hf download"):
        AestheticHead.load("hf-hub:someone/not-cached-here/head.pth")
    with pytest.raises(UserError, match="hf-hub:owner/repo/file"):
        AestheticHead.load("hf-hub:justarepo")


def test_a_term_from_two_judges_is_refused(clip_scorer):
    with pytest.raises(ValueError, match="term 'style' is produced by both clip and clip"):
        Panel([ClipJudge(clip_scorer), ClipJudge(clip_scorer, ("style",))])


# ---------------------------------------------------------------- config: judges and terms

def _config(tmp_path, demo_assets, **overrides):
    from search_helpers import demo_config
    from zsearch.settings.load import load_config
    return load_config(demo_config(tmp_path, demo_assets, **overrides))


def test_config_terms_weights_and_pareto_choice(tmp_path, demo_assets):
    from zsearch.settings.schema import JUDGE_TERMS
    from zsearch.judges import JUDGES
    assert {name: JUDGES[name].terms for name in JUDGE_TERMS} == {n: (t,) for n, t in JUDGE_TERMS.items()}
    head = build_tiny_aesthetic(tmp_path / "h.safetensors", 32)
    config = _config(tmp_path, demo_assets, identity={"references": str(demo_assets.references),
                                                      "model": "x", "weight": 0.5},
                     judges=[{"name": "aesthetic", "checkpoint": "h.safetensors"}, {"name": "hps", "weight": 2.0}],
                     objective={"style": 1.0, "prompt": 0.3, "pareto": True, "terms": ["aesthetic", "identity"]})
    assert config.term_weights() == {"style": 1.0, "prompt": 0.3, "identity": 0.5, "aesthetic": 0.05,
                                     "preference": 2.0}
    assert config.pareto_terms == ["aesthetic", "identity"]
    assert config.judges[0].checkpoint == str(head)  # resolved against the config's folder
    plain = _config(tmp_path, demo_assets)
    assert "judges" not in plain.fingerprint() and "terms" not in plain.fingerprint()["objective"]


@pytest.mark.parametrize("objective, judges, message", [
    ({"pareto": True, "terms": ["style", "identity"]}, [], "'identity' is not a term of this config"),
    ({"pareto": True, "terms": ["style"]}, [], "two or three different terms"),
    ({"terms": ["style", "prompt"]}, [], "add `pareto: true`"),
    ({}, [{"name": "hps"}, {"name": "hps"}], "each judge once"),
    ({}, [{"name": "imagereward"}], "judges.0.name"),
])
def test_config_mistakes_are_one_line_errors(tmp_path, demo_assets, objective, judges, message):
    with pytest.raises(UserError, match=message):
        _config(tmp_path, demo_assets, objective=objective, judges=judges)
