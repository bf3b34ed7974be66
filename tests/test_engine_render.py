"""The Engine on the tiny demo model: determinism, the references reproduced, PNGs, OOM halving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zsearch.engine import Engine, Job, save_pngs
from zsearch.engine.render import Renderer
from zsearch.judges.images import read_image, reference_files
from zsearch.errors import UserError
from zsearch.lora.read import load_loras
from zsearch.lora.recipe import LoraWeights, Recipe

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def engine(demo_assets, tmp_path_factory):
    return Engine(str(demo_assets.model_dir), load_loras(demo_assets.loras),
                  engine_prompts(demo_assets),
                  device="cpu", way="side", cache_dir=tmp_path_factory.mktemp("cache"))


def engine_prompts(assets) -> list[str]:
    """The search's prompts, then any the references show besides them."""
    return list(dict.fromkeys([*assets.prompt_list, *assets.reference_prompts]))


def plain(assets, r1: float, r2: float) -> Recipe:
    return Recipe([LoraWeights(path=assets.loras[0], ratio=r1), LoraWeights(path=assets.loras[1], ratio=r2)])


def render(engine, assets, jobs, batch=6):
    return engine.render(jobs, steps=assets.steps, width=assets.width, height=assets.height, batch=batch)


def test_engine_renders_the_references_at_the_hidden_recipe(engine, demo_assets):
    # The references were rendered with the LoRAs fused into the weights by hand (zsearch.demo.build):
    # the side path must give the same images, up to the PNG's 8-bit rounding.
    engine.set_recipe(demo_assets.hidden_recipe)
    files = reference_files(demo_assets.references)
    index = engine_prompts(demo_assets).index
    names = {}  # job -> the file it must reproduce (ref_p<reference prompt>_s<seed>.png)
    for p, prompt in enumerate(demo_assets.reference_prompts):
        for seed in demo_assets.reference_seeds:
            names[Job(index(prompt), prompt, seed)] = f"ref_p{p}_s{seed}.png"
    assert [f.name for f in files] == sorted(names.values())
    jobs = sorted(names, key=names.get)
    images = render(engine, demo_assets, jobs)
    assert images.shape == (len(files), 3, demo_assets.height, demo_assets.width)
    assert images.device == engine.device and images.dtype == torch.float32
    references = torch.stack([read_image(f) for f in files])
    assert (images - references).abs().max() <= 0.5 / 255 + 1e-4
    engine.set_recipe(plain(demo_assets, 0.0, 0.0))
    baseline = render(engine, demo_assets, jobs)
    assert (baseline - references).abs().mean() > 0.01  # the weighting visibly matters


def test_same_recipe_and_seed_give_identical_pixels(engine, demo_assets):
    jobs = [Job(0, demo_assets.prompt_list[0], 1), Job(2, demo_assets.prompt_list[2], 5)]
    engine.set_recipe(plain(demo_assets, 0.8, 0.4))
    first = render(engine, demo_assets, jobs)
    engine.set_recipe(plain(demo_assets, 1.4, 0.0))
    other = render(engine, demo_assets, jobs)
    engine.set_recipe(plain(demo_assets, 0.8, 0.4))
    again = render(engine, demo_assets, jobs)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert engine.last_timings["set_weighting"] >= 0 and engine.last_timings["render"] > 0


def test_an_image_does_not_depend_on_its_batch(engine, demo_assets):
    prompts = demo_assets.prompt_list
    jobs = [Job(i % 3, prompts[i % 3], 10 + i) for i in range(5)]
    engine.set_recipe(plain(demo_assets, 0.6, 0.9))
    together = render(engine, demo_assets, jobs, batch=5)
    one_by_one = render(engine, demo_assets, jobs, batch=1)
    in_pairs = render(engine, demo_assets, jobs, batch=2)
    # Same noise per job whatever the batch; only float rounding of batched matmuls may differ.
    torch.testing.assert_close(one_by_one, together, rtol=0, atol=2e-5)
    torch.testing.assert_close(in_pairs, together, rtol=0, atol=2e-5)
    assert not torch.allclose(together[0], together[3], atol=1e-2)  # prompt 0 with other seeds differs


def test_out_of_memory_halves_the_batch_and_retries(engine, demo_assets, caplog):
    jobs = [Job(i % 3, demo_assets.prompt_list[i % 3], 20 + i) for i in range(5)]
    engine.set_recipe(plain(demo_assets, 0.5, 0.5))
    expected = render(engine, demo_assets, jobs, batch=1)

    real_pipe = engine.pipe
    sizes = []

    class TightMemory:  # the real pipeline, as if only 2 images fit on the GPU at once
        def __getattr__(self, name):
            return getattr(real_pipe, name)

        def __call__(self, **kwargs):
            sizes.append(len(kwargs["prompt_embeds"]))
            if len(kwargs["prompt_embeds"]) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_pipe(**kwargs)

    renderer = Renderer(TightMemory(), engine.renderer.prompt_embeds)
    images = renderer.render(jobs, steps=demo_assets.steps, width=demo_assets.width, height=demo_assets.height,
                             batch=5)
    assert sizes[:2] == [5, 2] and set(sizes[2:]) <= {1, 2} and renderer.batch_limit == 2
    assert "rendering 2 image(s) at a time" in caplog.text
    torch.testing.assert_close(images, expected, rtol=0, atol=2e-5)


def test_save_pngs_writes_the_rounded_pixels(tmp_path):
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    paths = [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    save_pngs(images, paths)
    for image, path in zip(images, paths):
        array = np.asarray(Image.open(path))
        assert array.shape == (16, 24, 3)
        assert np.array_equal(array, (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.png", "sub"]  # no temp files left


def test_render_size_must_be_a_multiple_of_16(engine, demo_assets):
    with pytest.raises(UserError, match="60x64: width and height must be multiples of 16"):
        engine.render([Job(0, "x", 1)], steps=1, width=60, height=64)


def test_the_engine_never_loads_the_text_encoder(engine):
    assert engine.pipe.text_encoder is None and engine.pipe.tokenizer is None


def test_guidance_uses_the_cached_empty_prompt(engine, demo_assets):
    jobs = [Job(1, demo_assets.prompt_list[1], 3)]
    engine.set_recipe(plain(demo_assets, 0.5, 0.5))
    turbo = render(engine, demo_assets, jobs)
    guided = engine.render(jobs, steps=demo_assets.steps, width=demo_assets.width, height=demo_assets.height,
                           guidance=2.0)
    assert guided.shape == turbo.shape and torch.isfinite(guided).all()
    assert (guided - turbo).abs().mean() > 1e-3
    without = Renderer(engine.pipe, engine.renderer.prompt_embeds)  # no empty-prompt embedding given
    with pytest.raises(UserError, match="guidance > 0 needs the empty prompt's embedding"):
        without.render(jobs, steps=1, width=64, height=64, guidance=2.0)
