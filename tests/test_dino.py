"""The DINOv2 identity scorer on a tiny random Dinov2Model (the real class, saved with save_pretrained)."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from tiny_judges import build_tiny_dino
from zsearch.judges.dino import DinoScorer, Preprocess, preprocess
from zsearch.judges.images import read_image as load_image
from zsearch.errors import UserError


def _smooth_image(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    """A smooth random image (3,H,W) in [0,1]: low-frequency noise upsampled."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=g)
    return F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)[0]


def _save_png(image: torch.Tensor, path):
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return build_tiny_dino(tmp_path_factory.mktemp("dino") / "tiny-dinov2")


@pytest.fixture()
def refs(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(3):
        _save_png(_smooth_image(10 + i), folder / f"ref{i}.png")
    return folder


def test_preprocess_matches_the_models_own_image_processor(dino_dir):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(dino_dir)
    steps = Preprocess.from_processor(processor)
    assert steps.shortest_edge == 36 and steps.crop == (32, 32)
    image = (_smooth_image(3, 48, 70) * 255).round().to(torch.uint8)
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    got = preprocess(image.float().unsqueeze(0) / 255, steps)
    assert got.shape == expected.shape == (1, 3, 32, 32)
    # The processor works in uint8 (rounding to 1/255); we stay in float: a pixel level apart at most.
    assert (got - expected).abs().max() < 0.03


def test_preprocess_resizes_the_shorter_side_and_crops_the_centre():
    steps = Preprocess(shortest_edge=8, resize_to=None, crop=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    # A tall 32x16 image whose value is its row / 31. Shorter side 16 -> 8, so 32 -> 16 rows; the
    # centre crop keeps resized rows 4..11, whose centres lie at input row 2r + 0.5. Interpolation
    # keeps a linear ramp linear away from the borders.
    rows = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1) / 31
    out = preprocess(rows.expand(1, 3, 32, 16), steps)
    assert out.shape == (1, 3, 8, 8)
    expected = ((2 * torch.arange(4, 12, dtype=torch.float32) + 0.5) / 31).view(1, 1, 8, 1)
    assert torch.allclose(out, ((expected - 0.5) / 0.5).expand(1, 3, 8, 8), atol=1e-4)


def test_an_image_scores_higher_against_itself(dino_dir, tmp_path):
    a, b = _smooth_image(1), _smooth_image(2)
    folder = tmp_path / "a"
    folder.mkdir()
    _save_png(a, folder / "a.png")
    scorer = DinoScorer.load(str(dino_dir), folder, device="cpu")
    a_loaded = load_image(folder / "a.png")  # what the reference really is after PNG rounding
    scores = scorer.score(torch.stack([a_loaded, b]))["identity"]
    assert scores.shape == (2,)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # one reference: its own centroid
    assert scores[0] > scores[1]


def test_scores_lie_in_minus_one_to_one_and_equal_a_hand_computed_centroid_cosine(dino_dir, refs):
    from transformers import AutoModel

    scorer = DinoScorer.load(str(dino_dir), refs, device="cpu")
    images = torch.stack([_smooth_image(s) for s in range(20, 26)])
    scores = scorer.score(images, prompts=["ignored"] * 6)["identity"]
    assert ((scores >= -1) & (scores <= 1)).all()

    # Independently: the processor's own preprocessing, the model's CLS token, the centroid by hand.
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(dino_dir)
    model = AutoModel.from_pretrained(dino_dir).eval()

    def cls(batch_uint8):
        pixels = processor(images=list(batch_uint8), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return model(pixel_values=pixels).last_hidden_state[:, 0]

    ref_uint8 = [torch.from_numpy(__import__("numpy").array(Image.open(p))).permute(2, 0, 1)
                 for p in sorted(refs.iterdir())]
    ref_emb = torch.stack([F.normalize(cls([r])[0], dim=0) for r in ref_uint8])
    centroid = ref_emb.mean(0)
    centroid = centroid / centroid.norm()
    img_uint8 = (images * 255).round().to(torch.uint8)
    img_emb = F.normalize(cls(img_uint8), dim=-1)
    expected = img_emb @ centroid
    assert torch.allclose(scores, expected, atol=2e-2)  # the processor rounds to uint8; we do not
    assert torch.allclose(scorer.centroid, centroid, atol=2e-2)
    # The ordering of the renders by identity is the same as the independent computation's.
    assert torch.equal(scores.argsort(), expected.argsort())


def test_reference_embeddings_are_cached_and_the_cache_is_read(dino_dir, refs, tmp_path):
    cache = tmp_path / "cache"
    first = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    assert first.encoded_references == 3
    files = list(cache.glob("dino-*.safetensors"))
    assert len(files) == 1
    assert torch.allclose(load_file(str(files[0]))["embeddings"], first.reference_embeddings)

    second = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    assert second.encoded_references == 0
    assert torch.equal(second.reference_embeddings, first.reference_embeddings)

    # Proof the second load reads the file: plant known embeddings, the centroid follows them.
    planted = F.normalize(torch.tensor([[1.0] + [0.0] * 31, [0.0, 1.0] + [0.0] * 30, [1.0] + [0.0] * 31]), dim=-1)
    save_file({"embeddings": planted}, str(files[0]))
    third = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    expected = F.normalize(planted.mean(0), dim=0)
    assert torch.allclose(third.centroid, expected)

    # A changed reference file is a new key: encoded again, the old entry left alone.
    _save_png(_smooth_image(99), refs / "ref1.png")
    fourth = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    assert fourth.encoded_references == 3
    assert len(list(cache.glob("dino-*.safetensors"))) == 2


def test_a_damaged_cache_file_is_recomputed(dino_dir, refs, tmp_path):
    cache = tmp_path / "cache"
    first = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    (path,) = cache.glob("dino-*.safetensors")
    path.write_bytes(b"not safetensors")
    again = DinoScorer.load(str(dino_dir), refs, device="cpu", cache_dir=cache)
    assert again.encoded_references == 3
    assert torch.allclose(again.reference_embeddings, first.reference_embeddings)


def _error(**kwargs) -> str:
    with pytest.raises(UserError) as info:
        DinoScorer.load(device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_errors_are_one_line_and_name_the_thing(dino_dir, refs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nowhere"
    assert str(missing) in _error(model=str(missing), references=refs) and "not found" in _error(
        model=str(missing), references=refs)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is empty" in _error(model=str(empty), references=refs)

    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    (no_processor / "config.json").write_text((dino_dir / "config.json").read_text())
    assert "preprocessor_config.json" in _error(model=str(no_processor), references=refs)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (no_weights / name).write_text((dino_dir / name).read_text())
    assert "cannot be loaded" in _error(model=str(no_weights), references=refs)

    not_dino = tmp_path / "not_dino"
    not_dino.mkdir()
    (not_dino / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (not_dino / "preprocessor_config.json").write_text("{}")
    assert "bert" in _error(model=str(not_dino), references=refs)

    hub = _error(model="nobody-here/no-such-dinov2", references=refs)
    assert "nobody-here/no-such-dinov2" in hub and "HF_HUB_OFFLINE" in hub

    assert "is not a folder" in _error(model=str(dino_dir), references=tmp_path / "no_refs")
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "notes.txt").write_text("x")
    assert "no .png/.jpg/.webp images" in _error(model=str(dino_dir), references=no_images)

    (refs / "broken.png").write_bytes(b"\x89PNG not really")
    message = _error(model=str(dino_dir), references=refs)
    assert "broken.png" in message and "cannot be read" in message


def test_build_tiny_dino_is_reused(dino_dir):
    stamp = (dino_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_dino(dino_dir) == dino_dir
    assert (dino_dir / "model.safetensors").stat().st_mtime_ns == stamp
