"""`zsearch report <config>`: the morning-after page of a study (Markdown + HTML + PNG plots)."""

from __future__ import annotations

from zsearch.commands.arguments import add_config
from zsearch.settings.load import check_writable_folder, load_config


def register(sub) -> None:
    p = sub.add_parser("report", help="write results/<name>/report/: summary, plots, validation, best grid",
                       description="Write the study's report (Markdown and HTML with plots) into results/<name>/report/: "
                                   "what the search found, how sure it is, and what to do next.")
    add_config(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    import optuna
    from zsearch.report import write_report
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its scratch studies need no log lines
    config = load_config(args.config)
    check_writable_folder(config.out_dir / "report", f"{config.source}: output")
    index = write_report(config)
    print(f"report: {index}\n        {index.with_suffix('.html')}")
    return 0
