"""Tiny offline models: a random Z-Image-Turbo pipeline, a taught tiny open_clip, LoRAs, references.

Everything is built from the real classes with small configs and saved the way the real models
are (`save_pretrained`, an open_clip `local-dir:` folder, AI-Toolkit safetensors), so the code
under test loads them through the very same paths. Nothing is downloaded; everything is seeded,
so two builds give the same files. Building takes under a minute on a CPU (about 50 s on 2 cores).

The demo is a miniature of real use:
- the two demo LoRAs have a look, as style LoRAs do: each component and layer band of each LoRA
  pushes the image in its own direction, the same for every seed and prompt;
- the images are the model's, not the initial noise: the subject is a colour per latent patch, the
  look a texture within it (`_paint_model_output`);
- the reference images show that look: they are rendered at a hidden weighting
  (`DemoAssets.hidden_recipe`) with seeds of their own, never the search's training, validation
  or noise seeds (on the search's subjects: in this tiny model the look's strength still depends a
  little on the subject, so references of other subjects would move the peak);
- the judge sees the look and the prompt, not the seed's layout (`zsearch.demo.judge`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from zsearch.demo.aesthetic import build_aesthetic_head
from zsearch.demo.clip import build_tiny_clip
from zsearch.demo.files import build_once, lock, one_thread, write_atomic_file
from zsearch.demo.loras import write_demo_loras
from zsearch.demo.pipeline import build_tiny_pipeline
from zsearch.demo.references import render_references
from zsearch.demo.spec import BUILD_VERSION, CLIP_CONFIG, JUDGE_WEIGHTINGS, DemoAssets, PROMPTS, demo_assets
from zsearch.util.quiet import quiet_libraries
from zsearch.util.steps import step_bar


def build_demo(root: Path) -> DemoAssets:
    """Build (or reuse) every demo asset under `root`; safe to call from several processes, and
    under torch.no_grad() or torch.inference_mode() (the judge's training turns grad back on)."""
    from zsearch.demo.judge import training_enabled
    with training_enabled():
        return _build_demo(Path(root))


def _build_demo(root: Path) -> DemoAssets:
    root.mkdir(parents=True, exist_ok=True)
    assets = demo_assets(root)
    build_aesthetic_head(root / "aesthetic-head.safetensors", CLIP_CONFIG["model_cfg"]["embed_dim"])
    with lock(root / ".lock"), one_thread():
        stamp = root / ".complete"
        if stamp.exists() and stamp.read_text() == BUILD_VERSION:
            return assets
        print(f"zsearch: building the demo's tiny models in {root} (once, about a minute) ...",
              file=sys.stderr, flush=True)
        # zsearch's own steps (the judge's renders are most of the time), not the libraries' bars
        with step_bar("building the demo models (once)", BUILD_STEPS) as bar, quiet_libraries():
            build_tiny_pipeline(assets.model_dir)
            bar.update()
            if not all(path.exists() for path in assets.loras):
                write_demo_loras(assets)
            bar.update()
            build_once(assets.clip_dir, lambda d: build_tiny_clip(d, assets, tick=bar.update))
            bar.update(BUILD_STEPS - 1 - bar.n)  # the judge's steps, when it was built already
            if not assets.prompts.exists():
                write_atomic_file(assets.prompts, lambda tmp: tmp.write_text(
                    "# demo prompts, one a line\n" + "\n".join(PROMPTS) + "\n"))
            build_once(assets.references, lambda d: render_references(assets, d))
            bar.update()
        stamp.write_text(BUILD_VERSION)
    return assets


BUILD_STEPS = 4 + JUDGE_WEIGHTINGS  # pipeline, LoRAs, the judge's renders and its training, references


def main() -> None:  # python -m zsearch.demo.build [DIR]
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-assets")
    with quiet_libraries():
        assets = build_demo(root)
    print(f"demo assets in {assets.root}")


if __name__ == "__main__":
    main()
