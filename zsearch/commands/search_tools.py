"""Sub-commands around a search config: run, best, dashboard, render."""

from __future__ import annotations

import sys
from pathlib import Path

from zsearch.commands.arguments import add_config, add_port, dashboard_server, input_path
from zsearch.settings.load import check_inputs, check_writable_folder, load_config
from zsearch.commands.configs import load_for_rendering
from zsearch.errors import UserError
from zsearch.outputs.summary import best_summary
from zsearch.study.opening import check_recipe_fits, open_existing_study


def register(sub) -> None:
    p = sub.add_parser("run", help="run (or resume) the weight search of a config",
                       description="Run the weight search of a config, or resume it: render, score, keep the best "
                                   "(results/<name>/best.*); Ctrl-C finishes the current trial and stops.")
    add_config(p)
    p.add_argument("--trials", type=int, help="the study's total trial budget (overrides search.trials); "
                                              "raise it to search a finished study further")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the log file still has every line)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("best", help="write best.yaml / best.safetensors / best.png from the study",
                       description="Re-export the best outputs (best.yaml, best.safetensors, best.png) from the "
                                   "study's storage, from any machine that reaches it.")
    add_config(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("validate", help="re-score the top trials on the held-out validation set",
                       description="Re-render and re-score the baseline and the validation.top_k best trials on the "
                                   "held-out seeds and prompts (a run does this at its end); best.* follow the result.")
    add_config(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard (127.0.0.1)",
                       description="Serve optuna-dashboard on 127.0.0.1, opened at the study's page with every "
                                   "trial's renders; Ctrl-C stops it.")
    add_config(p)
    add_port(p)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("render", help="render the config's prompts and seeds with a recipe",
                       description="Render the config's prompts and seeds with one recipe (default: plain stacking), "
                                   "as images and a grid, to preview a weighting.")
    add_config(p)
    p.add_argument("--recipe", type=input_path, help="recipe YAML (default: the baseline, plain stacking)")
    p.add_argument("-o", "--out", type=Path, help="output folder (default: results/<name>/render-<recipe>)")
    p.add_argument("--force", action="store_true", help="write into an output folder that already has images")
    p.set_defaults(func=cmd_render)


def _summary(config, trial) -> str:
    """The best and its files, then the trial counts and what to do next (report/advice.py)."""
    from zsearch.report.advice import summary_lines
    return best_summary(config, trial) + "".join(f"\n  {line}" for line in summary_lines(config))


def cmd_run(args) -> int:
    from zsearch.search.run import run
    config = load_for_rendering(args.config)
    if args.trials is not None and args.trials < 1:
        raise UserError("--trials must be at least 1")
    trial = run(config, trials=args.trials, show_progress=not args.no_progress)
    print(_summary(config, trial))
    return 0


def cmd_best(args) -> int:
    from zsearch.outputs.best import export_best
    from zsearch.study.storage import artifact_store
    from zsearch.study.opening import check_fingerprint
    config = load_config(args.config)
    study = open_existing_study(config)
    check_inputs(config)
    check_writable_folder(config.out_dir, f"{config.source}: output")
    check_fingerprint(config, study)  # a changed config would map the trials' params wrongly
    print(_summary(config, export_best(config, study, artifact_store(config), force=True)))
    return 0


def cmd_validate(args) -> int:
    from zsearch.search.validate import validate_study
    from zsearch.study.opening import check_fingerprint
    config = load_for_rendering(args.config)
    study = open_existing_study(config)
    if config.validation.top_k == 0:  # the baseline alone would be validated, and best.* would follow it
        check_inputs(config)
        check_fingerprint(config, study)  # another study's inputs are the first thing to say
        raise UserError(f"{config.source}: validation.top_k is 0, so there is no trial to validate; set it "
                        f"(e.g. validation: {{top_k: 5}}) to re-score the top trials on held-out seeds")
    earlier = _validation_ran(study)
    if earlier:
        print(f"zsearch: {earlier}; validating again: the baseline and the current top "
              f"{config.validation.top_k} trials on the held-out jobs, replacing that result", file=sys.stderr, flush=True)
    check_writable_folder(config.out_dir, f"{config.source}: output")
    print(_summary(config, validate_study(config)))
    return 0


def _validation_ran(study) -> str:
    """'validation already ran (3 trials re-scored, it chose trial 7)', or '' when it has not."""
    from zsearch.study import records
    record = records.read_validation(study)
    if record is None:
        return ""
    return f"validation already ran for this study ({len(record.rows)} trials re-scored, it chose trial {record.chosen})"


def cmd_dashboard(args) -> int:
    from zsearch.study.storage import artifact_store, make_storage
    config = load_config(args.config)
    open_existing_study(config)
    storage = make_storage(config)
    server = dashboard_server(storage, artifact_store(config), args.port)
    # straight to this study's page: the study list's Delete buttons are one click from losing a night
    study_id = storage.get_study_id_from_name(config.name)
    url = f"http://127.0.0.1:{server.server_port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard for study '{config.name}' at {url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_render(args) -> int:
    from zsearch.lora.recipe import load_recipe
    from zsearch.search.render_recipe import render_recipe
    from zsearch.study.space import SearchSpace
    config = load_for_rendering(args.config)
    recipe = load_recipe(args.recipe) if args.recipe else SearchSpace(config).recipe({})
    if args.recipe:
        check_recipe_fits(args.recipe, recipe, config)
    out = args.out or config.out_dir / f"render-{args.recipe.stem if args.recipe else 'baseline'}"
    check_writable_folder(out, "-o")
    if not args.force and out.is_dir() and any(out.glob("*.png")):
        raise UserError(f"{out}: already holds images; choose another -o or pass --force to replace them")
    paths = render_recipe(config, recipe, out)
    print(f"{len(paths) - 1} images and a grid in {out}")
    return 0
