"""The report's words against its numbers: noise comparisons, what the held-out set was, what to load."""

from __future__ import annotations

import optuna
import pytest

from zsearch.report.facts import gather
from zsearch.report.page import to_markdown
from zsearch.report.sections import validation
from zsearch.study import records

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(base_gap: float, top_gap: float, sigma: float, same_prompts=True) -> optuna.Study:
    """A baseline and one top trial, validated with the given train − held-out gaps; noise σ given."""
    study = optuna.create_study(direction="maximize")
    for number, (train, attrs) in enumerate([(0.70, {"role": "baseline"}), (0.75, {})]):
        study.add_trial(optuna.trial.create_trial(value=train, user_attrs={"score": train, **attrs}))
    rows = [records.ValidationRow(trial=0, train=0.70, validation=0.70 - base_gap, baseline=True),
            records.ValidationRow(trial=1, train=0.75, validation=0.75 - top_gap, baseline=False)]
    records.write_validation(study, records.Validation(rows=rows, chosen=1, seeds=[101, 102], prompts=3,
                                                       same_prompts=same_prompts))
    records.write_noise(study, records.Noise(mean=0.70, std=sigma, scores=[0.70, 0.70]))
    return study


def _paragraph(study, tmp_path) -> str:
    return to_markdown(validation(gather(study), tmp_path, "c.yaml"))


@pytest.mark.parametrize("base_gap, top_gap, expected, absent", [
    # the top trials lost 0.0040 less than the baseline: a difference larger than σ, in their favour
    (0.0100, 0.0060, "The top trials held up better than the baseline, by 0.0040 (more than the noise σ, 0.0020)",
     "within"),
    (0.0100, 0.0110, "The two differ by 0.0010, within the noise σ (0.0020)", "more than"),
    (0.0100, 0.0090, "The two differ by 0.0010, within the noise σ (0.0020)", "more than"),
    (0.0100, 0.0150, "extra drop (0.0050) is more than the noise σ (0.0020): the search partly fitted", "within"),
])
def test_noise_comparisons_say_what_the_numbers_say(tmp_path, base_gap, top_gap, expected, absent):
    text = _paragraph(_study(base_gap, top_gap, sigma=0.0020), tmp_path)
    assert expected in text, text
    sentence = next(s for s in text.split(". ") if "σ" in s)
    assert absent not in sentence, sentence


@pytest.mark.parametrize("same, expected", [
    (True, "new seeds of the same 3 prompts (seeds 101, 102, none used in the search)"),
    (False, "3 held-out prompts with new seeds (seeds 101, 102)"),
])
def test_the_held_out_set_is_named_for_what_it_is(tmp_path, same, expected):
    text = _paragraph(_study(0.01, 0.01, 0.002, same_prompts=same), tmp_path)
    assert f"re-scored on {expected}." in text, text
    if same:
        assert "held-out prompts" not in text
