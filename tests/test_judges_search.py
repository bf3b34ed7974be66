"""The judges inside the search: every term scored per render, the objective their weighted sum,
`objective: pareto` over any chosen terms, and the report's terms, correlations and front."""

from __future__ import annotations

import optuna
import pytest
import torch
import torch.nn.functional as F

from search_helpers import DEMO_CLIP_WIDTH, demo_config
from zsearch.judges import AestheticHead
from tiny_judges import build_tiny_aesthetic
from zsearch.judges.openclip import preprocess
from zsearch.settings.load import load_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return build_tiny_aesthetic(tmp_path_factory.mktemp("head") / "head.safetensors", DEMO_CLIP_WIDTH, seed=4)


def test_evaluation_scores_every_term_and_weighs_them(tmp_path, demo_assets, head):
    from zsearch.search.evaluate import Evaluator
    from zsearch.search.session import Session

    path = demo_config(tmp_path, demo_assets, judges=[{"name": "aesthetic", "checkpoint": str(head), "weight": 0.2}])
    session = Session(load_config(path))
    evaluation = Evaluator(session.config, session.engine, session.scorers).evaluate(session.space.recipe({}))
    assert set(evaluation.terms) == {"style", "prompt", "aesthetic"}

    # independently: the head on the unit CLIP embedding of each render, averaged per prompt
    clip = session.scorers.clip.model
    with torch.no_grad():
        embedding = F.normalize(clip.encode_image(preprocess(evaluation.images, dict(clip.visual.preprocess_cfg))),
                                dim=-1)
        per_job = AestheticHead.load(str(head))(embedding)
    n_prompts = len(session.config.prompt_list)
    per_prompt = per_job.view(n_prompts, -1).mean(dim=1)
    assert evaluation.terms["aesthetic"] == pytest.approx(per_prompt.tolist(), abs=1e-5)
    weights = {"style": 1.0, "prompt": 0.3, "aesthetic": 0.2}
    for i in range(n_prompts):
        expected = sum(w * evaluation.terms[t][i] for t, w in weights.items())
        assert evaluation.combined[i] == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def pareto_study(demo_assets, head, tmp_path_factory):
    from zsearch.search.run import run
    tmp = tmp_path_factory.mktemp("pareto")
    path = demo_config(tmp, demo_assets, name="par", search={"trials": 4, "sampler": "random"},
                       identity={"references": str(demo_assets.references), "model": str(tmp / "dino"), "weight": 0.5},
                       judges=[{"name": "aesthetic", "checkpoint": str(head)}],
                       objective={"pareto": True, "terms": ["identity", "aesthetic", "style"]})
    from tiny_judges import build_tiny_dino
    build_tiny_dino(tmp / "dino")
    config = load_config(path)
    run(config, show_progress=False)
    return config, optuna.load_study(study_name="par", storage=f"sqlite:///{config.out_dir / 'study.db'}")


def test_a_pareto_study_takes_the_chosen_terms_identity_included(pareto_study):
    config, study = pareto_study
    assert len(study.directions) == 3 and study.metric_names == ["identity", "aesthetic", "style"]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    for trial in complete:
        terms = trial.user_attrs["terms"]
        assert set(terms) == {"style", "prompt", "identity", "aesthetic"}
        assert trial.values == pytest.approx([terms["identity"], terms["aesthetic"], terms["style"]])
        weighted = sum(w * terms[t] for t, w in config.term_weights().items())
        assert trial.user_attrs["score"] == pytest.approx(weighted, abs=1e-9)
    import json
    from safetensors import safe_open
    with safe_open(str(config.out_dir / "best.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["zsearch.terms"]) == {"style": 1.0, "prompt": 0.3, "identity": 0.5, "aesthetic": 0.05}
    assert json.loads(metadata["zsearch.scorers"])["aesthetic"].endswith("head.safetensors")


def test_report_shows_terms_their_correlation_and_the_front(pareto_study):
    from zsearch.report import write_report
    from zsearch.report.terms import pearson
    config, study = pareto_study
    index = write_report(config, study).read_text()
    assert "What each judge said" in index and "The Pareto front" in index
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    r = pearson([t.user_attrs["terms"]["style"] for t in complete], [t.user_attrs["terms"]["aesthetic"] for t in complete])
    import numpy as np
    expected = np.corrcoef([t.user_attrs["terms"]["style"] for t in complete],
                           [t.user_attrs["terms"]["aesthetic"] for t in complete])[0, 1]
    assert r == pytest.approx(expected, abs=1e-12)
    assert f"{r:+.2f}" in index
    for trial in study.best_trials:
        picture = config.out_dir / "report" / f"front-{trial.number:05d}.png"
        assert picture.is_file() and picture.read_bytes()[:4] == b"\x89PNG"
        assert f"front-{trial.number:05d}.png" in index
