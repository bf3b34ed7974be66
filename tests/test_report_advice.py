"""The report's advice (weights on a bound, still improving or not), its slice axes over the whole
search range, and its one answer to "which parameters matter" with bootstrap intervals."""

from __future__ import annotations

import random
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import create_trial

from zsearch.report import importance, plots, write_report
from zsearch.report.facts import gather
from zsearch.settings.load import parse_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

RANGES = {"a.ratio": (0.0, 1.5), "b.ratio": (0.0, 1.5), "b.attn": (0.25, 1.75), "b.ffn": (0.25, 1.75)}
DISTS = {name: FloatDistribution(low, high) for name, (low, high) in RANGES.items()}
BASELINE = {"a.ratio": 1.0, "b.ratio": 1.0, "b.attn": 1.0, "b.ffn": 1.0}


def _config(tmp_path: Path, name: str):
    search = {"ratio": [0.0, 1.5], "components": [0.25, 1.75], "layers": "none", "tie": ["attn", "ffn"]}
    data = {"name": name, "loras": [{"path": "a.safetensors", "search": search}, {"path": "b.safetensors", "search": search}],
            "references": "refs",
            "prompts": ["a lighthouse"], "output": str(tmp_path / "out" / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_config(data, path)


def _trial(params: dict, score: float, **attrs) -> optuna.trial.FrozenTrial:
    return create_trial(params=params, distributions={k: DISTS[k] for k in params}, value=score,
                        user_attrs={"score": score, **attrs})


def _study(config, trials: list) -> optuna.Study:
    config.out_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=config.name, direction="maximize",
                                storage=f"sqlite:///{(config.out_dir / 'study.db').resolve()}")
    study.add_trials(trials)
    return study


def _searched(rng: random.Random, n: int, attn=(0.5, 1.2)) -> list:
    """Search trials with b.attn inside `attn` only: the sampled values span less than the range."""
    out = []
    for _ in range(n):
        params = {"a.ratio": rng.uniform(0.3, 1.2), "b.ratio": rng.uniform(0.3, 1.2),
                  "b.attn": rng.uniform(*attn), "b.ffn": rng.uniform(0.5, 1.2)}
        out.append(_trial(params, 0.5 + 0.1 * params["b.attn"] - 0.05 * abs(params["b.ratio"] - 0.9)))
    return out


def test_weights_on_a_bound_and_a_late_best_give_concrete_advice(tmp_path):
    """The best (the last trial) has b.attn at 1.7499999999999998 (the demo's float), on the top of
    [0.25, 1.75], and a.ratio at 0, the bottom of [0, 1.5]: widen components to [0.25, 2.5];
    LoRA a is off. Found at the last of 21 trials: the search was still improving."""
    config = _config(tmp_path, "late")
    best = {"a.ratio": 0.0, "b.ratio": 0.9, "b.attn": 1.7499999999999998, "b.ffn": 1.0}
    trials = [_trial(BASELINE, 0.55, role="baseline"), *_searched(random.Random(0), 19), _trial(best, 0.9)]
    _study(config, trials)
    text = write_report(config).read_text()
    low, high = RANGES["b.attn"]
    widened = f"[{low:g}, {high + 0.5 * (high - low):g}]"
    assert widened == "[0.25, 2.5]"
    assert (f"b.attn 1.75 sits on the high end of [0.25, 1.75]: widen `components:` of LoRA `b` to {widened}"
            in text)
    assert "a.ratio 0 sits on the low end of [0, 1.5]: LoRA `a` is switched off in the best: it does not help here" in text
    assert "b.ffn" not in text.split("**What next:**")[1].split("\n")[0]  # inside its range: no advice
    assert "The best training score came at trial 20 (21 of 21 trials run), in the last 20 %: the search was " \
           "still improving; add hours or trials" in text
    assert f"`zsearch run {config.source} --trials 42`" in text
    # The best values table says which weights sit on a bound.
    assert re.search(r"\| b\.attn \| \[0\.25, 1\.75\] \| 1\.000 \| 1\.750 \| on the high end of its range \|", text)
    assert re.search(r"\| b\.ffn \| \[0\.25, 1\.75\] \| 1\.000 \| 1\.000 \|  \|", text)


def test_an_early_best_says_more_trials_are_unlikely_to_help(tmp_path):
    config = _config(tmp_path, "early")
    best = {"a.ratio": 0.8, "b.ratio": 0.9, "b.attn": 1.3, "b.ffn": 1.0}
    trials = [_trial(BASELINE, 0.55, role="baseline"), _trial(best, 0.9), *_searched(random.Random(1), 28)]
    _study(config, trials)
    text = write_report(config).read_text()
    assert "The best training score came at trial 1 (2 of 30 trials run); the 28 trials since brought no " \
           "improvement" in text
    assert "add hours or trials" not in text and "widen" not in text


def test_slice_axes_span_the_whole_search_range_not_the_sampled_values(tmp_path):
    config = _config(tmp_path, "axes")
    trials = [_trial(BASELINE, 0.55, role="baseline"), *_searched(random.Random(2), 20)]
    study = _study(config, trials)
    facts = gather(study)
    fig = plots.slices_figure(facts, ["b.attn", "b.ffn"])
    sampled = [t.params["b.attn"] for t in trials]
    assert max(sampled) < 1.3 and min(sampled) > 0.45  # the values cover a part of [0.25, 1.75]
    for ax, name in zip(fig.axes, ["b.attn", "b.ffn"]):
        assert ax.get_title() == name
        low, high = RANGES[name]
        left, right = ax.get_xlim()
        assert left < low < high < right and right - left == pytest.approx(1.06 * (high - low))


def _driven_by_x(n: int, seed: int = 0) -> list:
    """Random trials over x and four others; the score depends on x alone."""
    rng = random.Random(seed)
    names = ["x", "p1", "p2", "p3", "p4"]
    dists = {name: FloatDistribution(0.0, 2.0) for name in names}
    out = []
    for _ in range(n):
        params = {name: rng.uniform(0.0, 2.0) for name in names}
        score = 1.0 - (params["x"] - 1.4) ** 2
        out.append(create_trial(params=params, distributions=dists, value=score, user_attrs={"score": score}))
    return out, dists


def test_one_parameter_that_drives_the_score_ranks_first_with_an_interval_above_the_others():
    trials, _ = _driven_by_x(80)
    got = importance.importances(trials, resamples=60)
    assert list(got)[0] == "x"
    x = got["x"]
    assert x.low <= x.value <= x.high
    assert x.low > max(e.high for name, e in got.items() if name != "x")
    assert importance.settled_leaders(got) >= 1
    # The median of the resamples' importances, each resample normalised to sum to 1.
    assert sum(e.value for e in got.values()) == pytest.approx(1.0, abs=0.15)


def test_the_report_ranks_on_complete_trials_only_and_says_why_the_dashboard_may_differ(tmp_path):
    """80 complete trials where x drives the score, and 60 partial ones whose stand-in scores follow
    p1: over every COMPLETE trial (the dashboard's view) p1 ranks first; the report leaves the
    partial trials out and ranks x first, settled."""
    config = _config(tmp_path, "rank")
    trials, dists = _driven_by_x(80)
    rng = random.Random(5)
    for _ in range(60):
        params = {name: rng.uniform(0.0, 2.0) for name in dists}
        stand_in = 0.99 + 0.005 * params["p1"]  # the stopped trials' stand-ins sit just below the best
        trials.append(create_trial(params=params, distributions=dists, value=stand_in,
                                   user_attrs={"score": stand_in, "partial": True}))
    study = _study(config, trials)
    everything = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    assert next(iter(everything)) == "p1"  # what a chart over all COMPLETE trials shows
    text = write_report(config).read_text()
    assert "Over the 80 complete search trials, leaving out 60 stopped early (their scores are stand-ins)" in text
    ranked = re.search(r"sum to 1\) ranks: (.*?)\. Each figure", text).group(1)
    assert ranked.startswith("x ")
    assert "Settled: x" in text
    assert "optuna-dashboard's importance chart may rank differently" in text
    assert "stand-in scores of the trials stopped early" in text
