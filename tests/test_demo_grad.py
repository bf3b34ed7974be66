"""The demo build trains its judge: it must work inside torch.no_grad() and torch.inference_mode(),
as a benchmark calls it (issue 22: bench/trial.py crashed), and give the same bytes as without."""

import hashlib
import json

import pytest
import torch

from zsearch.demo.judge import train_judge
from zsearch.demo.spec import CLIP_CONFIG


def _train(folder, mode, init):
    import open_clip
    from zsearch.judges.openclip import preprocess
    with mode():
        model = open_clip.create_model(f"local-dir:{folder}")  # made inside the mode: inference tensors there
        model.load_state_dict(init)
        cfg = dict(model.visual.preprocess_cfg)
        images = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        fit = train_judge(model, images, torch.arange(24) % 6, torch.arange(24) % 2, ["a cat", "a dog"],
                          open_clip.get_tokenizer(f"local-dir:{folder}"), lambda x: preprocess(x, cfg), seed=1,
                          steps=4)
    return fit, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_train_judge_under_no_grad_and_inference_mode(tmp_path, mode):
    import open_clip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG))
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in open_clip.create_model(f"local-dir:{tmp_path}").state_dict().items()}
    plain_fit, plain = _train(tmp_path, torch.enable_grad, init)
    fit, trained = _train(tmp_path, mode, init)
    assert fit == plain_fit
    assert any(not torch.equal(trained[k], init[k]) for k in init)  # it did learn
    assert all(torch.equal(trained[k], plain[k]) for k in plain)  # exactly as with grad on


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_build_demo_under_inference_mode_gives_the_same_bytes(demo_assets, tmp_path):
    from zsearch.demo.build import build_demo
    with torch.inference_mode():  # stricter than no_grad: tensors made here cannot enter autograd at all
        assets = build_demo(tmp_path / "demo")
    fresh, session = _digests(assets.root), _digests(demo_assets.root)
    # the session's demo folder may also hold what other tests cached in it since: compare the build's files
    assert len(fresh) > 20 and fresh == {name: session.get(name) for name in fresh}
