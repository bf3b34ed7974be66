"""What the search suggests doing next: weights of the best that sit on a bound of their range
(the optimum may lie beyond it), and whether the search was still improving when it stopped.

Read from the study alone: parameter names are `<lora>.ratio`, `<lora>.<component>` and
`<lora>.layers.<key>` (study/space.py), their ranges are the study's distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from optuna.trial import FrozenTrial

from zsearch.report.facts import StudyFacts

EDGE = 0.01  # within 1 % of the range's width of a bound counts as on it (samplers stop just short)
WIDEN = 0.5  # a widened range reaches half its width further on the side that was hit
LATE = 0.8  # the best found after 80 % of the trials run: the search was still improving


@dataclass(frozen=True)
class OnBound:
    name: str
    value: float
    low: float
    high: float
    side: str  # "low" or "high"


def on_bounds(params: dict[str, float], ranges: dict[str, tuple[float, float]]) -> list[OnBound]:
    out = []
    for name, value in params.items():
        if name not in ranges:
            continue
        low, high = ranges[name]
        edge = EDGE * (high - low)
        if value <= low + edge:
            out.append(OnBound(name, float(value), low, high, "low"))
        elif value >= high - edge:
            out.append(OnBound(name, float(value), low, high, "high"))
    return out


def config_key(name: str) -> tuple[str, str]:
    """'b.attn' -> ('b', 'components'); 'b.ratio' -> ('b', 'ratio'); 'b.layers.0-9' -> ('b', 'layer_range')."""
    label, _, rest = name.partition(".")
    if rest == "ratio":
        return label, "ratio"
    return label, "layer_range" if rest.startswith("layers.") else "components"


def _number(x: float) -> str:
    return f"{round(x, 3):g}"


def widen_sentences(bounds: list[OnBound]) -> list[str]:
    """One sentence per LoRA and config key: which weights sit on which bound, and the new range."""
    groups: dict[tuple[str, str], list[OnBound]] = {}
    for b in bounds:
        groups.setdefault(config_key(b.name), []).append(b)
    out = []
    for (label, key), hits in groups.items():
        low, high = hits[0].low, hits[0].high
        width = high - low
        names = ", ".join(f"{b.name} {_number(b.value)}" for b in hits)
        sides = {b.side for b in hits}
        where = " and ".join(f"the {side} end" for side in ("low", "high") if side in sides)
        text = f"{names} sit{'s' if len(hits) == 1 else ''} on {where} of [{_number(low)}, {_number(high)}]"
        new_low = max(0.0, low - WIDEN * width) if "low" in sides else low
        new_high = high + WIDEN * width if "high" in sides else high
        if (new_low, new_high) == (low, high):  # only a low end of 0: nothing lower to search
            off = f"LoRA `{label}` is switched off in the best: it does not help here" if key == "ratio" \
                else "switched off in the best"
            out.append(f"{text}: {off} (0 is as low as a weight goes).")
            continue
        out.append(f"{text}: widen `{key}:` of LoRA `{label}` to [{_number(new_low)}, {_number(new_high)}] "
                   f"under a new `name:` (a new study); the best may lie beyond.")
    return out


@dataclass(frozen=True)
class Progression:
    best_number: int  # the best trial's number
    best_at: int  # its position among the trials run (1-based)
    run: int  # trials run (complete or stopped early; failed ones left out)

    @property
    def improving(self) -> bool:
        return self.best_at > 1 and self.best_at > LATE * self.run


def progression(run: list[FrozenTrial], best: Optional[FrozenTrial]) -> Optional[Progression]:
    numbers = [t.number for t in sorted(run, key=lambda t: t.number)]
    if best is None or best.number not in numbers:
        return None
    return Progression(best.number, numbers.index(best.number) + 1, len(numbers))


def progression_sentence(p: Progression, config_path: Optional[str] = None) -> str:
    text = f"The best training score came at trial {p.best_number} ({p.best_at} of {p.run} trials run)"
    if p.improving:
        command = f"`zsearch run {config_path} --trials {2 * p.run}`" if config_path else f"`--trials {2 * p.run}`"
        return (text + f", in the last {100 - round(100 * LATE)} %: the search was still improving; add hours "
                       f"or trials ({command} continues this study).")
    since = p.run - p.best_at
    return text + (f"; the {since} trials since brought no improvement: more trials of this search are unlikely "
                   f"to help much." if since else ".")


def advise(facts: StudyFacts, config_path: Optional[str] = None) -> list[str]:
    """The report's and the run summary's advice: the weights of the best (what best.* hold) on a
    bound, then whether the search was still improving. Empty when nothing has completed."""
    if facts.best is None or facts.train_best is None:
        return []
    out = widen_sentences(on_bounds(facts.best.params, facts.ranges))
    p = progression(facts.run, facts.train_best)
    if p is not None:
        out.append(progression_sentence(p, config_path))
    return out


def summary_lines(config) -> list[str]:
    """For the run's terminal summary: the trial counts and the advice, read from the config's
    study (nothing when there is no study to read)."""
    from zsearch.errors import UserError
    from zsearch.study.opening import open_existing_study
    from zsearch.report.facts import gather
    from zsearch.study import records

    try:
        study = open_existing_study(config)
    except UserError:
        return []
    facts = gather(study, objective_weights=(config.objective.style, config.objective.prompt))
    return [f"trials: {records.count_words(facts.tally)}", *advise(facts, str(config.source))]
