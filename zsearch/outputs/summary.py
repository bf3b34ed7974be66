"""The terminal's summary of the best: its trial, scores, verdict and the files to load."""

from __future__ import annotations

from typing import Optional

from optuna.trial import FrozenTrial

from zsearch.outputs.best import read_best_info
from zsearch.outputs.provenance import how_to_load
from zsearch.settings.schema import Config


def best_summary(config: Config, trial: Optional[FrozenTrial]) -> str:
    """What the terminal says after a run, `zsearch best` or a review: the best and its files."""
    if trial is None:
        return f"study '{config.name}': no completed trial yet"
    info = read_best_info(config.out_dir) or {}
    scores = info.get("scores", {})
    parts = [f"score {scores.get('train', float('nan')):.5f}"]
    if scores.get("baseline") is not None:
        parts.append(f"baseline {scores['baseline']:.5f}")
    if scores.get("validation") is not None:
        parts.append(f"held-out {scores['validation']:.5f} (baseline {scores.get('baseline_validation', float('nan')):.5f})")
    confirmed = scores.get("confirmed") if isinstance(scores.get("confirmed"), dict) else None
    if confirmed and (info.get("chosen_by") or {}).get("by") == "confirmation":
        parts.append(f"confirmed {confirmed.get('mean', float('nan')):.5f} on {confirmed.get('jobs')} new jobs "
                     f"(chosen by confirmation)")
    if (info.get("chosen_by") or {}).get("by") == "person":
        parts.append(f"chosen by you in the review ({info['chosen_by']['choices']} choices)")
    out = config.out_dir
    verdict = gain_line(scores)
    return (f"best: trial {trial.number}, " + ", ".join(parts) + "\n" + (f"  {verdict}\n" if verdict else "") +
            f"  {out / 'best.safetensors'}\n  {out / 'best.yaml'}\n  {out / 'best.png'}\n" +
            "\n".join(f"  {line}" for line in how_to_load(out / "best.safetensors")))


def gain_line(scores: dict) -> Optional[str]:
    """The run summary's verdict, from best.yaml's `scores.gain` (see best.best_scores):
    'gain over the baseline +0.0123 ± 0.0081 (95 % interval, 12 held-out jobs, p = 0.002): conclusive'."""
    gain = scores.get("gain") if isinstance(scores, dict) else None
    if not isinstance(gain, dict) or not all(isinstance(gain.get(k), (int, float)) for k in ("gain", "low", "high")):
        return None
    half = (gain["high"] - gain["low"]) / 2
    where = {"validation": "held-out", "confirmation": "confirmation"}.get(gain.get("on"), "training")
    return (f"gain over the baseline {gain['gain']:+.5f} ± {half:.5f} (95 % interval {gain['low']:+.5f} to "
            f"{gain['high']:+.5f}, paired over {gain.get('jobs', '?')} {where} jobs, p = {gain.get('p', float('nan')):.3g}): "
            f"{gain.get('verdict', '?')}")
