"""The open_clip scorer on the tiny demo CLIP: sanity of the scores, preprocessing, errors."""

from __future__ import annotations

import shutil

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zsearch.judges.images import read_image, reference_files
from zsearch.judges.openclip import Scorer, preprocess
from zsearch.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


def save(image: torch.Tensor, path, format=None):
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path, format=format)


def random_images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Three reference images: a png, a jpg (other size) and a webp."""
    folder = tmp_path_factory.mktemp("refs")
    images = random_images(3, seed=1)
    save(images[0], folder / "a.png")
    save(F.interpolate(images[1:2], size=(80, 48), mode="bilinear")[0], folder / "b.jpg")
    save(images[2], folder / "c.webp", format="WEBP")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def test_an_image_scores_higher_against_itself(demo_assets, tmp_path):
    image, other = random_images(2, seed=7)
    save(image, tmp_path / "ref.png")
    scorer = Scorer.load(demo_assets.clip_model, None, tmp_path, device="cpu")
    scores = scorer.score(torch.stack([read_image(tmp_path / "ref.png"), other]), ["a", "a"])
    assert scores["style"][0] > scores["style"][1]
    assert scores["style"][0] == pytest.approx(1.0, abs=1e-5)  # the reference itself


def test_scores_are_cosines_in_range(demo_assets, refs):
    scorer = Scorer.load(demo_assets.clip_model, None, refs, device="cpu")
    images = random_images(5, seed=3)
    prompts = ["a red fox", "a lighthouse", "a red fox", "", "portrait of a sailor"]
    scores = scorer.score(images, prompts)
    assert set(scores) == {"style", "prompt"}
    for values in scores.values():
        assert values.shape == (5,) and values.dtype == torch.float32
        assert ((values >= -1) & (values <= 1)).all()
    # prompt score = cosine of open_clip's own image and text embeddings, computed here independently
    model = scorer.model
    tokens = open_clip.get_tokenizer(demo_assets.clip_model)(prompts)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
        image = F.normalize(model.encode_image(preprocess(images, scorer.preprocess_cfg)), dim=-1)
    torch.testing.assert_close(scores["prompt"], (image * text).sum(1), rtol=0, atol=1e-5)
    assert len(scorer.reference_files) == 3  # the .txt is not a reference


def test_centroid_and_pairwise_by_hand(demo_assets, refs):
    centroid = Scorer.load(demo_assets.clip_model, None, refs, style="centroid", device="cpu")
    pairwise = Scorer.load(demo_assets.clip_model, None, refs, style="pairwise", device="cpu")
    images = random_images(4, seed=5)
    r = centroid.reference_embeddings  # unit vectors, one per reference
    x = centroid.embed_images(images)
    assert torch.allclose(r.norm(dim=1), torch.ones(3)) and torch.allclose(x.norm(dim=1), torch.ones(4))
    # centroid: cos(x, mean r); pairwise: mean_j cos(x, r_j)
    by_hand_centroid = torch.stack([F.cosine_similarity(xi, r.mean(0), dim=0) for xi in x])
    by_hand_pairwise = torch.stack([torch.stack([torch.dot(xi, rj) for rj in r]).mean() for xi in x])
    c = centroid.score(images, ["p"] * 4)["style"]
    p = pairwise.score(images, ["p"] * 4)["style"]
    torch.testing.assert_close(c, by_hand_centroid, rtol=0, atol=1e-5)
    torch.testing.assert_close(p, by_hand_pairwise, rtol=0, atol=1e-5)
    # and they agree as they must: pairwise = centroid x |mean r|
    torch.testing.assert_close(p, c * r.mean(0).norm(), rtol=0, atol=1e-5)


def test_with_one_reference_centroid_equals_pairwise(demo_assets, tmp_path):
    save(random_images(1, seed=9)[0], tmp_path / "only.png")
    images = random_images(3, seed=10)
    c = Scorer.load(demo_assets.clip_model, None, tmp_path, style="centroid", device="cpu").score(images, ["x"] * 3)
    p = Scorer.load(demo_assets.clip_model, None, tmp_path, style="pairwise", device="cpu").score(images, ["x"] * 3)
    torch.testing.assert_close(c["style"], p["style"], rtol=0, atol=1e-6)


def test_tensor_preprocessing_matches_open_clips_pil_transform(demo_assets, refs):
    _, _, transform = open_clip.create_model_and_transforms(demo_assets.clip_model)
    scorer = Scorer.load(demo_assets.clip_model, None, refs, device="cpu")
    for path in reference_files(refs):  # square and 80x48 (resize the short side, crop the long)
        with Image.open(path) as image:
            expected = transform(image.convert("RGB"))
        got = preprocess(read_image(path).unsqueeze(0), scorer.preprocess_cfg)[0]
        assert got.shape == expected.shape == (3, 32, 32)
        assert (got - expected).abs().mean() < 0.02  # PIL's and torch's bicubic differ slightly


def test_the_demo_references_score_best_at_the_hidden_weighting(demo_assets):
    scorer = Scorer.load(demo_assets.clip_model, None, demo_assets.references, device="cpu")
    files = reference_files(demo_assets.references)
    refs = torch.stack([read_image(f) for f in files])
    on_target = scorer.score(refs, ["p"] * len(refs))["style"].mean()
    noise = scorer.score(random_images(len(refs), seed=2), ["p"] * len(refs))["style"].mean()
    assert on_target > 0.5 and on_target > noise + 0.3


def test_reference_embeddings_are_cached_on_disk(demo_assets, refs, tmp_path):
    first = Scorer.load(demo_assets.clip_model, None, refs, device="cpu", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("clipref-*.safetensors")
    # prove the second load reads the cache: plant recognisable embeddings in it
    from safetensors.torch import save_file
    planted = F.normalize(torch.ones(3, first.reference_embeddings.shape[1]), dim=-1)
    save_file({"embeds": planted}, str(entry))
    second = Scorer.load(demo_assets.clip_model, None, refs, device="cpu", cache_dir=tmp_path)
    assert torch.equal(second.reference_embeddings, planted)
    # a changed reference folder is a different cache entry
    other = tmp_path / "refs2"
    shutil.copytree(refs, other)
    save(random_images(1, seed=4)[0], other / "d.png")
    third = Scorer.load(demo_assets.clip_model, None, other, device="cpu", cache_dir=tmp_path)
    assert third.reference_embeddings.shape[0] == 4 and len(list(tmp_path.glob("clipref-*"))) == 2


# -- errors ----------------------------------------------------------------------------------------

def test_missing_reference_folder(demo_assets, tmp_path):
    with pytest.raises(UserError, match=r"references: .*nope is not a folder of images \(not found\); point `references:` at one"):
        Scorer.load(demo_assets.clip_model, None, tmp_path / "nope")


def test_empty_reference_folder(demo_assets, tmp_path):
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(UserError, match=r"references: no .png/.jpg/.webp images in .*; add some reference images"):
        Scorer.load(demo_assets.clip_model, None, tmp_path)


def test_references_given_as_a_file(demo_assets, tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"x.png is not a folder of images \(is a file\); point `references:` at one"):
        Scorer.load(demo_assets.clip_model, None, tmp_path / "x.png")


def test_unreadable_reference_image_is_named(demo_assets, tmp_path):
    save(random_images(1, seed=1)[0], tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UserError, match=r"reference image '.*broken.jpg' cannot be read .*replace or remove it"):
        Scorer.load(demo_assets.clip_model, None, tmp_path, device="cpu")


def test_unknown_style(demo_assets, refs):
    with pytest.raises(UserError, match="scorer style 'median' is unknown; use centroid or pairwise"):
        Scorer.load(demo_assets.clip_model, None, refs, style="median")


@pytest.mark.parametrize("model, pretrained, message", [
    ("ViT-Q-99", "openai", r"'ViT-Q-99' is not an open_clip model; use a name from open_clip.list_models"),
    ("ViT-B-32", None, r"'ViT-B-32' needs `pretrained:` \(a tag such as openai"),
    ("ViT-B-32", "no_such_tag", r"tag 'no_such_tag' is unknown for ViT-B-32; use one of openai"),
    ("ViT-B-32", "/nowhere/clip.safetensors", r"checkpoint '/nowhere/clip.safetensors' not found"),
    ("ViT-B-32", "openai", r"'ViT-B-32' \(openai\) cannot be loaded"),  # offline: no download
    ("hf-hub:nobody/nothing", None, r"'hf-hub:nobody/nothing' cannot be loaded"),
])
def test_unknown_or_unavailable_models(refs, model, pretrained, message):
    with pytest.raises(UserError, match=message) as info:
        Scorer.load(model, pretrained, refs, device="cpu")
    assert "\n" not in str(info.value)


def test_local_dir_without_config_or_weights(demo_assets, refs, tmp_path):
    with pytest.raises(UserError, match="no open_clip_config.json"):
        Scorer.load(f"local-dir:{tmp_path}", None, refs)
    shutil.copy(demo_assets.clip_dir / "open_clip_config.json", tmp_path)
    with pytest.raises(UserError, match=r"no weights \(.safetensors/.bin/.pth\)"):
        Scorer.load(f"local-dir:{tmp_path}", None, refs)


def test_a_checkpoint_file_as_pretrained(demo_assets, refs, tmp_path):
    """A built-in architecture name + a local weights file (here: the tiny config registered by name)."""
    import json

    config = json.loads((demo_assets.clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    config_file = tmp_path / "zsearch-tiny-test.json"
    config_file.write_text(json.dumps(config))
    open_clip.add_model_config(config_file)
    weights = demo_assets.clip_dir / "open_clip_model.safetensors"
    by_file = Scorer.load("zsearch-tiny-test", str(weights), refs, device="cpu")
    by_dir = Scorer.load(demo_assets.clip_model, None, refs, device="cpu")
    images = random_images(2, seed=11)
    torch.testing.assert_close(by_file.embed_images(images), by_dir.embed_images(images), rtol=0, atol=1e-6)
