"""The two ComfyUI nodes. Each turns zsearch's UserError into NodeError: one line in ComfyUI's
error dialog naming the file or value and the fix, without zsearch's internals chained to it."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from zsearch.comfyui.patches import add_weighted_loras
from zsearch.comfyui.tuning import BANDS, band_widget, tuned_weights
from zsearch.errors import UserError
from zsearch.lora.blocks import COMPONENTS
from zsearch.lora.read import load_lora, load_loras
from zsearch.lora.recipe import LoraWeights, Recipe, load_recipe, save_recipe

CATEGORY = "loaders/zsearch"
FROM_RECIPE = "(the recipe's LoRA)"
WEIGHT = {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}


class NodeError(Exception):
    """A mistake the user can fix, shown by ComfyUI as one line."""


@contextmanager
def _one_line():
    try:
        yield
    except UserError as exc:
        raise NodeError(f"zsearch: {exc}") from None
    except OSError as exc:  # the user's own paths: permission, read-only disk, ...
        where = f"{exc.filename}: " if exc.filename else ""
        raise NodeError(f"zsearch: {where}{exc.strerror or exc.__class__.__name__}") from None


def user_path(text: str, what: str) -> Path:
    """A path typed into a widget: quotes and spaces around it dropped, ~ expanded, relative to
    ComfyUI's working folder."""
    text = (text or "").strip().strip('"').strip("'").strip()
    if not text:
        raise UserError(f"{what}: empty; give the file's path (e.g. results/style/best.yaml)")
    return Path(os.path.expanduser(text)).resolve()


def _stamp(*texts: str) -> str:
    """What ComfyUI compares to decide a re-run: the files' sizes and times (a night rewrites best.yaml)."""
    stamps = []
    for text in texts:
        try:
            stat = user_path(text, "path").stat()
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except (UserError, OSError):
            stamps.append("")
    return "|".join(stamps)


class ZImageRecipeLoras:
    """Every LoRA of a zsearch recipe, at exactly the recipe's per-module weights."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = ("Patches a Z-Image MODEL with the LoRAs of a zsearch recipe (best.yaml or any hand-written "
                   "recipe), each module at ratio x component x layer weight, times strength.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "recipe": ("STRING", {"default": "results/style/best.yaml", "multiline": False,
                                  "tooltip": "the recipe file: a search's best.yaml or your own"}),
            "strength": ("FLOAT", {**WEIGHT, "tooltip": "multiplies every weight of the recipe"}),
        }}

    @classmethod
    def IS_CHANGED(cls, model=None, recipe="", strength=1.0):
        try:
            loras = [str(lw.path) for lw in load_recipe(user_path(recipe, "recipe")).loras]
        except UserError:
            loras = []  # the run itself will say what is wrong
        return _stamp(recipe, *loras)

    def apply(self, model, recipe, strength=1.0):
        with _one_line():
            parsed = load_recipe(user_path(recipe, "recipe"))
            loras = load_loras([lw.path for lw in parsed.loras])
            scales = [lw.module_scales(lora.modules) for lw, lora in zip(parsed.loras, loras)]
            patched = add_weighted_loras(model, loras, scales, strength)
        logging.info("zsearch: %s: %d LoRA(s) patched at the recipe's weights x %g", recipe.strip(), len(loras), strength)
        return (patched,)


def _lora_choices() -> list[str]:
    try:
        import folder_paths  # ComfyUI's: the files in models/loras
        return [FROM_RECIPE, *folder_paths.get_filename_list("loras")]
    except ImportError:
        return [FROM_RECIPE]


class ZImageLoraBlockWeights:
    """One LoRA with its ratio, the 8 component weights and 3 layer bands as widgets; a recipe
    prefills them (the widgets then multiply its weights); `save_recipe` writes the result back."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    DESCRIPTION = ("One Z-Image LoRA with ratio x component x layer-band weights. With a recipe, each widget "
                   "multiplies the recipe's weight (1.0 keeps it); save_recipe writes the tuned weighting as a "
                   "recipe for `zsearch merge --recipe`.")

    @classmethod
    def INPUT_TYPES(cls):
        weights = {name: ("FLOAT", dict(WEIGHT)) for name in ("ratio", *COMPONENTS, *map(band_widget, BANDS))}
        return {
            "required": {"model": ("MODEL",), "lora": (_lora_choices(),), **weights},
            "optional": {
                "recipe": ("STRING", {"default": "", "tooltip": "a recipe whose weights the widgets start from"}),
                "recipe_lora": ("INT", {"default": 0, "min": 0, "max": 63,
                                        "tooltip": "which of the recipe's LoRAs (0 = the first)"}),
                "save_recipe": ("STRING", {"default": "", "tooltip": "write the tuned weighting here (.yaml)"}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, recipe="", **_):
        return _stamp(recipe)

    def apply(self, model, lora, ratio, recipe="", recipe_lora=0, save_recipe="", **widgets):
        with _one_line():
            base, source = self._base(recipe, recipe_lora)
            path = self._lora_path(lora, base)
            weights = tuned_weights(path, ratio, {c: widgets[c] for c in COMPONENTS},
                                    {band: widgets[band_widget(band)] for band in BANDS}, base)
            loaded = load_lora(path)
            if (save_recipe or "").strip():
                self._save(save_recipe, weights, source, recipe_lora)
            return (add_weighted_loras(model, [loaded], [weights.module_scales(loaded.modules)]),)

    @staticmethod
    def _base(recipe: str, index: int) -> tuple[LoraWeights | None, tuple[Path, Recipe] | None]:
        if not (recipe or "").strip():
            return None, None
        path = user_path(recipe, "recipe")
        parsed = load_recipe(path)
        if not 0 <= index < len(parsed.loras):
            raise UserError(f"{path}: recipe_lora {index} is out of range; the recipe has {len(parsed.loras)} "
                            f"LoRA(s), numbered from 0")
        return parsed.loras[index], (path, parsed)

    @staticmethod
    def _lora_path(choice: str, base: LoraWeights | None) -> Path:
        if choice == FROM_RECIPE:
            if base is None:
                raise UserError(f"lora: '{FROM_RECIPE}' needs a recipe; give the recipe's path or pick a LoRA file")
            return Path(base.path)
        try:
            import folder_paths
            found = folder_paths.get_full_path("loras", choice)
        except ImportError:
            found = None
        return Path(found) if found else user_path(choice, "lora")

    @staticmethod
    def _save(target: str, weights: LoraWeights, source: tuple[Path, Recipe] | None, index: int) -> None:
        out = user_path(target, "save_recipe")
        if out.suffix.lower() not in (".yaml", ".yml"):
            raise UserError(f"save_recipe: {out} is not a .yaml file; give a path such as tuned.yaml")
        loras, info = [weights], {"tuned_in": "ComfyUI"}
        if source is not None:
            path, parsed = source
            if out == path:
                raise UserError(f"save_recipe: {out} is the recipe read; choose another file so that it is kept")
            loras = [weights if i == index else lw for i, lw in enumerate(parsed.loras)]
            info["tuned_from"] = str(path)
        save_recipe(Recipe(loras=loras, info=info), out)


NODE_CLASS_MAPPINGS = {
    "ZsearchRecipeLoras": ZImageRecipeLoras,
    "ZsearchLoraBlockWeights": ZImageLoraBlockWeights,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ZsearchRecipeLoras": "Z-Image LoRAs (zsearch recipe)",
    "ZsearchLoraBlockWeights": "Z-Image LoRA block weights",
}
