"""One set-up of a validated config, shared by run, validate and render.

The inputs are checked first; the study, the engine and the judges are opened on first use,
so a command pays only for what it needs.
"""

from __future__ import annotations

from functools import cached_property

from zsearch.settings.schema import Config
from zsearch.settings.load import check_inputs, check_setup
from zsearch.search.evaluate import Scorers
from zsearch.study.space import SearchSpace
from zsearch.study.storage import artifact_store
from zsearch.study.opening import open_study


def prepare(config: Config) -> None:
    """Check every input before any study exists (a demo config's assets are built by the command)."""
    check_inputs(config)
    check_setup(config)


def load_engine(config: Config, planned_images: int = 0):
    from zsearch.engine import Engine  # planned_images: what render.compile auto weighs the warm-up against
    from zsearch.lora.read import load_loras
    loras = load_loras([lora.path for lora in config.loras])
    prompts = list(dict.fromkeys([*config.prompt_list, *config.validation_prompts]))
    r = config.render
    return Engine(config.model, loras, prompts, device=config.device, way=r.way, cache_dir=config.cache_dir,
                  memory=r.memory, compile=r.compile, planned_images=planned_images,
                  render_size=(r.steps, r.width, r.height))


def load_scorers(config: Config, device) -> Scorers:
    from zsearch.judges.openclip import Scorer
    clip = Scorer.load(config.scorer.model, config.scorer.pretrained, config.references,
                       style=config.scorer.style, device=device, cache_dir=config.cache_dir)
    identity = None
    if config.identity is not None:
        from zsearch.judges.dino import DinoScorer
        identity = DinoScorer.load(config.identity.model, config.identity.references, device=device,
                                   cache_dir=config.cache_dir)
    from zsearch.judges import build_panel
    panel = build_panel(clip, identity, config.judges, config.references, clip_pretrained=config.scorer.pretrained)
    return Scorers(clip, identity, panel)


class Session:
    """A config made ready: inputs checked at once; study, engine and judges opened when first used."""

    def __init__(self, config: Config):
        import optuna
        optuna.logging.disable_default_handler()  # Optuna's stderr lines would break one-line errors
        self.config = config
        self.planned_images = 0  # `zsearch run` sets it before the engine loads (render.compile auto)
        prepare(config)

    @cached_property
    def space(self) -> SearchSpace:
        return SearchSpace(self.config)

    @cached_property
    def study(self):
        return open_study(self.config, self.space)

    @cached_property
    def store(self):
        return artifact_store(self.config)

    @cached_property
    def engine(self):
        return load_engine(self.config, self.planned_images)

    @cached_property
    def scorers(self) -> Scorers:
        return load_scorers(self.config, self.engine.device)
