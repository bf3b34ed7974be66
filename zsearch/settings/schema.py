"""The search config's schema, validated strictly: every mistake names its key and the fix.

Reading a config file, resolving its paths and checking its inputs live in `zsearch.settings.load`.
The default output folder is `results/<name>` under the folder zsearch is run from.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zsearch.lora.blocks import GROUPS, N_LAYERS
from zsearch.errors import UserError
from zsearch.settings.fingerprint import fingerprint


class _Strict(BaseModel):
    # inf or nan in a weight, range or ratio would make every score inf or nan, silently
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Range = tuple[float, float]


SEED_LIMIT = 2 ** 63  # torch's generators take 64-bit seeds; the held-out seeds are a few thousand above


def _check_seeds(values: list[int]) -> list[int]:
    """Seeds a generator takes, each once: a repeated seed renders the same jobs twice and counts
    them as two in every paired test."""
    for i, seed in enumerate(values):
        if not -SEED_LIMIT <= seed < SEED_LIMIT:
            raise ValueError(f"the seed {seed} is too large; use whole numbers below 2^63 "
                             f"(9223372036854775808), e.g. 42")
        if seed in values[:i]:
            raise ValueError(f"the seed {seed} appears twice; keep each seed once")
    return values


class LoraSearch(_Strict):
    """What the search varies for one LoRA; ranges are [low, high]."""

    ratio: Optional[Range] = None  # None: the ratio stays fixed
    components: Optional[Range] = (0.0, 2.0)  # None: component weights stay 1.0
    layers: Literal["none", "bands", "per_layer"] = "bands"
    layer_range: Optional[Range] = None  # default: the components range, else (0, 2)
    tie: list[str] = []  # groups searched as one weight, e.g. [attn, ffn]

    @field_validator("ratio", "components", "layer_range")
    @classmethod
    def _ordered(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range [{value[0]}, {value[1]}] must be [low, high] with low < high")
        return value

    @field_validator("tie")
    @classmethod
    def _known_groups(cls, value):
        for group in value:
            if group not in GROUPS:
                raise ValueError(f"unknown group '{group}'; tie one of {', '.join(GROUPS)}")
        if "qk" in value and "attn" in value:
            raise ValueError("tie either attn or qk, not both (qk is part of attn)")
        return value


class LoraEntry(_Strict):
    path: Path
    ratio: float = 1.0  # the fixed ratio, or the baseline's ratio when searched
    search: Optional[LoraSearch] = None  # absent: this LoRA is held fixed at `ratio`

    @model_validator(mode="after")
    def _baseline_inside(self):
        s = self.search
        if s and s.ratio and not s.ratio[0] <= self.ratio <= s.ratio[1]:
            raise ValueError(f"ratio {self.ratio} (the baseline) must lie inside search.ratio {list(s.ratio)}")
        for key in ("components", "layer_range"):
            rng = getattr(s, key, None) if s else None
            if rng and not rng[0] <= 1.0 <= rng[1]:
                raise ValueError(f"search.{key} {list(rng)} must contain 1.0 (the baseline weight)")
        return self


class RenderSettings(_Strict):
    steps: int = Field(8, ge=1, le=100)
    width: int = Field(1024, ge=16)
    height: int = Field(1024, ge=16)
    batch: int = Field(4, ge=1)
    guidance: float = 0.0
    way: Literal["auto", "side", "fused"] = "auto"  # how a weighting is applied (see engine)
    compile: Union[Literal["auto"], bool] = "auto"  # regional torch.compile (engine/compile.py)
    memory: Literal["auto", "full", "fp8", "offload"] = "auto"  # how the weights are held (engine/memory.py)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value):
        if value % 16:
            raise ValueError(f"{value} is not a multiple of 16; Z-Image needs multiples of 16 (e.g. 1024)")
        return value


class ScorerSettings(_Strict):
    model: str = "ViT-L-14"
    pretrained: Optional[str] = "datacomp_xl_s13b_b90k"
    style: Literal["centroid", "pairwise"] = "centroid"


class IdentitySettings(_Strict):
    """A second reference set scored by DINOv2 image similarity (a subject or character)."""

    references: Path
    model: str = "facebook/dinov2-small"  # hub id or local folder
    weight: float = 1.0  # its weight in the objective, beside style and prompt


class ObjectiveSettings(_Strict):
    """Weighted sum of the judges' terms (style, prompt, identity, and the extra judges'), or two
    or three terms side by side as a Pareto objective."""

    style: float = 1.0
    prompt: float = 0.3
    pareto: bool = False
    terms: Optional[list[str]] = None  # pareto: the objectives (default style and prompt)


# The term each extra judge scores, and its default weight (the aesthetic head rates 1-10, so
# 0.05 makes one point worth 0.05 of cosine similarity). csd scores `style` in CLIP's place.
JUDGE_TERMS = {"aesthetic": "aesthetic", "hps": "preference", "csd": "style"}
JUDGE_WEIGHTS = {"aesthetic": 0.05, "hps": 1.0}


class JudgeEntry(_Strict):
    """An extra judge (`judges:`): aesthetic, hps or csd (see zsearch/judges)."""

    name: Literal["aesthetic", "hps", "csd"]
    weight: Optional[float] = None  # default: JUDGE_WEIGHTS; csd: objective.style
    model: Optional[str] = None  # hps/csd: the open_clip architecture, or local-dir:
    checkpoint: Optional[str] = None  # a local file or hf-hub:owner/repo/file (aesthetic: the head)


class ValidationSettings(_Strict):
    """Held-out prompts and seeds the top trials are re-scored on; default: new seeds."""

    prompts: Optional[Union[Path, list[str]]] = None  # default: the search's prompts
    seeds: Optional[list[int]] = None  # default: as many new seeds as the search uses
    top_k: int = Field(5, ge=0)  # 0: no validation, best.* follows the training score

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value):
        return _check_seeds(value) if value else value

    def seeds_for(self, train_seeds: list[int]) -> list[int]:
        if self.seeds:
            return self.seeds
        start = max(train_seeds) + 1000  # new seeds, never training ones
        return [start + i for i in range(len(train_seeds))]


class NoiseSettings(_Strict):
    """The baseline is re-scored on `repeats` extra seed sets to measure the score's noise."""

    repeats: int = Field(3, ge=0)

    def seed_sets(self, train_seeds: list[int]) -> list[list[int]]:
        start = max(train_seeds) + 2000  # new seeds, apart from the training and validation ones
        n = len(train_seeds)
        return [[start + k * n + i for i in range(n)] for k in range(self.repeats)]


class ConfirmSettings(_Strict):
    """During a night (`hours:`), the top candidates are re-rendered on new seed sets of the
    training prompts, and the morning's best is chosen on those jobs (search/confirm.py)."""

    top_k: int = Field(3, ge=0)  # candidates kept in contention (and the baseline); 0: no confirmation
    rounds: int = Field(8, ge=1)  # seed sets per candidate at most (each as many jobs as a trial)
    after: float = Field(0.25, ge=0, lt=1)  # the share of the night searched before confirming starts
    share: float = Field(0.25, gt=0, le=1)  # from then on, at most this share of the renders confirm


DEFAULT_TRIALS = 500  # the trial budget of a config that sets neither `trials` nor `hours`


class SearchSettings(_Strict):
    trials: Optional[int] = Field(None, ge=1)  # a cap; without `hours` the budget (default 500)
    hours: Optional[float] = Field(None, gt=0)  # the night: the run ends before it, validation included
    confirm: ConfirmSettings = ConfirmSettings()
    sampler: Literal["auto", "tpe", "cmaes", "gp", "random"] = "auto"  # auto = gp: a GP on a bounded set of trials (study/samplers.py)
    seed: int = 0
    bands: int = Field(3, ge=1, le=N_LAYERS)
    prune: bool = True
    screen: bool = False  # one-factor-at-a-time sweep first; freeze what stays within the noise
    prefetch: Optional[bool] = None  # choose the next trial's point while this one renders; default: on a GPU

    @property
    def trial_cap(self) -> Optional[int]:
        """The study's trial budget: `trials`, else 500 without `hours`; None: the night decides."""
        if self.trials is not None:
            return self.trials
        return None if self.hours is not None else DEFAULT_TRIALS

    @property
    def confirms(self) -> bool:
        """Confirmation runs in a night only: its share is a share of the hours."""
        return self.hours is not None and self.confirm.top_k > 0


class Config(_Strict):
    name: str
    model: str = "Tongyi-MAI/Z-Image-Turbo"
    device: str = "auto"
    loras: list[LoraEntry] = Field(min_length=1)
    references: Path
    prompts: Union[Path, list[str]]
    seeds: list[int] = Field([0], min_length=1)
    render: RenderSettings = RenderSettings()
    scorer: ScorerSettings = ScorerSettings()
    identity: Optional[IdentitySettings] = None  # optional: a subject set judged by DINOv2
    judges: list[JudgeEntry] = []  # extra judges beside CLIP (and DINOv2)
    objective: ObjectiveSettings = ObjectiveSettings()
    search: SearchSettings = SearchSettings()
    validation: ValidationSettings = ValidationSettings()
    noise: NoiseSettings = NoiseSettings()
    storage: Optional[str] = None  # any Optuna storage URL; default sqlite in the output folder
    start: list[Path] = []  # recipes tried right after the baseline
    output: Optional[Path] = None  # default: results/<name> under the working folder
    cache: Optional[Path] = None  # prompt/reference embedding cache; default <output>/cache
    demo: Optional[Path] = None  # build the tiny offline demo models into this folder first

    # Filled in by load_config, not by the user.
    source: Path = Field(Path("config.yaml"), exclude=True)
    prompt_list: list[str] = Field([], exclude=True)
    validation_prompts: list[str] = Field([], exclude=True)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value):
        return _check_seeds(value)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value):
        """A name torch knows, checked as the config is read (whether this machine has it: at load)."""
        import torch
        if value != "auto":
            try:
                torch.device(value)
            except (RuntimeError, ValueError):
                raise ValueError("is not a device name; use auto, cpu, cuda or cuda:N") from None
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"'{value}' must be letters, digits, '.', '_' or '-' (it names a folder)")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _pareto_shorthand(cls, value):
        return {"pareto": True} if value == "pareto" else value

    @model_validator(mode="after")
    def _compatible(self):
        if self.objective.pareto and self.search.sampler == "cmaes":
            raise ValueError("sampler cmaes cannot optimise a pareto objective; use tpe, gp or random")
        if self.validation.seeds and set(self.validation.seeds) & set(self.seeds):
            raise ValueError("validation.seeds must differ from the training seeds (it is held-out data)")
        names = [j.name for j in self.judges]
        if len(set(names)) < len(names):
            raise ValueError("judges: each judge once (its term has one weight)")
        terms = self.objective.terms
        if terms is not None:
            if not self.objective.pareto:
                raise ValueError("objective.terms chooses a pareto study's objectives; add `pareto: true` "
                                 "or weigh the terms instead")
            known = list(self.term_weights())
            unknown = [t for t in terms if t not in known]
            if unknown:
                raise ValueError(f"objective.terms: '{unknown[0]}' is not a term of this config; use {', '.join(known)}")
            if not 2 <= len(set(terms)) == len(terms) <= 3:
                raise ValueError("objective.terms: two or three different terms")
        return self

    def term_weights(self) -> dict[str, float]:
        """{term: weight} of the objective's weighted sum, for every term the judges produce."""
        weights = {"style": self.objective.style, "prompt": self.objective.prompt}
        if self.identity is not None:
            weights["identity"] = self.identity.weight
        for judge in self.judges:
            term = JUDGE_TERMS[judge.name]
            default = weights.get("style") if judge.name == "csd" else JUDGE_WEIGHTS[judge.name]
            weights[term] = judge.weight if judge.weight is not None else default
        return weights

    @property
    def pareto_terms(self) -> list[str]:
        """The objectives of a pareto study, in order."""
        return list(self.objective.terms or ["style", "prompt"])

    @property
    def out_dir(self) -> Path:
        return self.output if self.output is not None else Path("results") / self.name

    @property
    def cache_dir(self) -> Path:
        return self.cache if self.cache is not None else self.out_dir / "cache"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    def searched(self) -> list[int]:
        return [i for i, lora in enumerate(self.loras) if lora.search is not None]

    def fingerprint(self, hashes=None) -> dict[str, Any]:
        """What a trial's score measured, by content (see zsearch.settings.fingerprint)."""
        return fingerprint(self, hashes)

    def fingerprint_hash(self) -> str:
        text = json.dumps(self.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


INTERNAL_FIELDS = {"source", "prompt_list", "validation_prompts"}  # filled in by load_config


def _one_line(error: ValidationError, source: Path) -> str:
    errors = error.errors()
    # a misspelt required key shows as "missing" and "unknown" at once: the unknown key is the cause
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind = first["type"]
    where = ".".join(str(part) for part in (first["loc"] if kind == "extra_forbidden" else _user_loc(first["loc"])))
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{where}'; {_spelling_hint(first['loc'])}"
    if kind == "missing":
        return f"{source}: '{where}' is required"
    message = UNION_EXPECTED.get(where) or first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return f"{source}: {where + ': ' if where else ''}{message}{shown}"


# The keys that take one of two kinds of value: pydantic reports the first kind it tried only.
UNION_EXPECTED = {
    "prompts": "must be a prompts file (one prompt a line) or a list of prompts",
    "validation.prompts": "must be a prompts file (one prompt a line) or a list of prompts",
    "render.compile": "must be auto, true or false",
}


def _user_loc(loc: tuple) -> tuple:
    """The keys and list indices of `loc` the user wrote: pydantic appends the member of a union
    it tried (`lax-or-strict[...]`, `list[str]`, `bool`), which names nothing in the file."""
    kept, model = [], Config
    for part in loc:
        if not isinstance(part, int):
            field = model.model_fields.get(str(part)) if model is not None else None
            if field is None:
                break
            model = _model_in(field.annotation)
        kept.append(part)
    return tuple(kept)


def _spelling_hint(loc: tuple) -> str:
    """'did you mean 'references'?' from the keys known where the unknown one stands."""
    import difflib
    known = [k for k in _keys_at(Config, loc[:-1]) if k not in INTERNAL_FIELDS]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'? (see configs/style.yaml)"
    nested = [f"{k}.{loc[-1]}" for k in known if str(loc[-1]) in _keys_at(Config, (*loc[:-1], k))]
    if nested:  # e.g. `sampler:` at the top, where it belongs under `search:`
        return f"did you mean '{nested[0]}'? (see configs/style.yaml)"
    return f"check its spelling; known keys here: {', '.join(known)}" if known else \
        "check its spelling (see configs/style.yaml)"


def _keys_at(model: type, loc: tuple) -> list[str]:
    """The field names of the schema model that the path `loc` (keys and list indices) leads to."""
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: its model is found from the list field's type
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> Optional[type]:
    """The BaseModel inside a field's type (Optional[X], list[X], Union[...]), if any."""
    import typing
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def validate_config(data: Any, source: Path) -> Config:
    """The schema's verdict on config data read from `source`, as one line naming the key."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a config is a YAML mapping (name:, loras:, references:, prompts:, ...)")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(exc, source)) from None
