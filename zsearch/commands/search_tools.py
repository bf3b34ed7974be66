"""Sub-commands around a search config: run, best, dashboard, render."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsearch.settings.load import check_inputs, check_writable_folder, load_config
from zsearch.commands.configs import load_for_rendering
from zsearch.errors import UserError
from zsearch.outputs.summary import best_summary
from zsearch.study.storage import open_existing_study


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number; use 1-65535, e.g. 8080")
    return port


def check_port_free(host: str, port: int) -> None:
    """Fail before the server starts (and prints its banner) when the port is taken."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port") from None


def register(sub) -> None:
    p = sub.add_parser("run", help="run (or resume) the weight search of a config")
    p.add_argument("config", type=Path)
    p.add_argument("--trials", type=int, help="override search.trials (total for the study)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log file only)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("best", help="write best.yaml / best.safetensors / best.png from the study")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("validate", help="re-score the top trials on the held-out validation set")
    p.add_argument("config", type=Path)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("dashboard", help="open the study in optuna-dashboard (127.0.0.1)")
    p.add_argument("config", type=Path)
    p.add_argument("--port", type=port_number, default=8080, help="a free port, 1-65535 (default 8080)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("render", help="render the config's prompts and seeds with a recipe")
    p.add_argument("config", type=Path)
    p.add_argument("--recipe", type=Path, help="recipe YAML (default: the baseline, plain stacking)")
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
    from zsearch.study.storage import artifact_store, check_fingerprint
    config = load_config(args.config)
    study = open_existing_study(config)
    check_inputs(config)
    check_writable_folder(config.out_dir, f"{config.source}: output")
    check_fingerprint(config, study)  # a changed config would map the trials' params wrongly
    print(_summary(config, export_best(config, study, artifact_store(config), force=True)))
    return 0


def cmd_validate(args) -> int:
    from zsearch.search.validate import validate_study
    config = load_for_rendering(args.config)
    open_existing_study(config)
    print(_summary(config, validate_study(config)))
    return 0


def cmd_dashboard(args) -> int:
    import optuna_dashboard
    from zsearch.study.storage import artifact_store, make_storage
    config = load_config(args.config)
    open_existing_study(config)
    check_port_free("127.0.0.1", args.port)
    url = f"http://127.0.0.1:{args.port}/dashboard"
    print(f"optuna-dashboard for study '{config.name}' at {url}  (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(make_storage(config), host="127.0.0.1", port=args.port,
                                    artifact_store=artifact_store(config))
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{args.port} ({exc.strerror}); pick another --port") from None
    return 0


def cmd_render(args) -> int:
    from zsearch.lora.recipe import load_recipe
    from zsearch.search.render_recipe import render_recipe
    from zsearch.study.space import SearchSpace
    config = load_for_rendering(args.config)
    recipe = load_recipe(args.recipe) if args.recipe else SearchSpace(config).recipe({})
    if len(recipe.loras) != len(config.loras):
        raise UserError(f"{args.recipe}: the recipe has {len(recipe.loras)} LoRAs, the config {len(config.loras)}")
    out = args.out or config.out_dir / f"render-{args.recipe.stem if args.recipe else 'baseline'}"
    check_writable_folder(out, "-o")
    if not args.force and out.is_dir() and any(out.glob("*.png")):
        raise UserError(f"{out}: already holds images; choose another -o or pass --force to replace them")
    paths = render_recipe(config, recipe, out)
    print(f"{len(paths) - 1} images and a grid in {out}")
    return 0
