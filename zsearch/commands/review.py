"""`zsearch review CONFIG`: compare the top candidates' held-out renders in optuna-dashboard."""

from __future__ import annotations

import time

from zsearch.commands.arguments import add_config, add_port
from zsearch.commands.configs import load_for_rendering
from zsearch.settings.load import check_inputs, check_writable_folder


def register(sub) -> None:
    p = sub.add_parser("review", help="the morning review: pick between the top candidates' renders "
                                      "in optuna-dashboard (127.0.0.1); `zsearch best` follows your choice",
                       description="Render the baseline and the top trials on the held-out seeds, and show them two at "
                                   "a time in optuna-dashboard; click Worst on the one you like less. Ctrl-C ends the "
                                   "review and re-exports best.* by your choice.")
    add_config(p)
    p.add_argument("--top-k", type=int, default=4, help="candidates besides the baseline (default 4)")
    add_port(p)
    p.set_defaults(func=cmd_review)


def cmd_review(args) -> int:
    from zsearch.outputs.best import export_best
    from zsearch.review.candidates import pick_candidates, render_candidates
    from zsearch.review.server import ReviewServer
    from zsearch.review.study import open_review
    from zsearch.study.storage import artifact_store, make_storage
    from zsearch.study.opening import check_fingerprint
    from zsearch.outputs.summary import best_summary
    from zsearch.study.opening import open_existing_study

    config = load_for_rendering(args.config)
    check_writable_folder(config.out_dir / "review", f"{config.source}: output")
    study = open_existing_study(config)
    check_inputs(config)
    check_fingerprint(config, study)  # the trials' params must map to this config's LoRAs
    candidates = pick_candidates(study, args.top_k)
    print(f"zsearch: rendering {len(candidates)} candidates on the held-out seeds ...", flush=True)
    renders = render_candidates(config, candidates, config.out_dir / "review")
    store = artifact_store(config)
    review = open_review(config, study, candidates, renders, store)
    server = ReviewServer(review, make_storage(config), store, port=args.port).start()
    print(f"review of {len(candidates)} candidates ({len(review.pairs)} pairs) at {server.url}\n"
          f"  click 'Worst' on the worse of the two renders; Ctrl-C when done", flush=True)
    announced = False
    try:
        while True:
            time.sleep(0.5)
            if not announced and review.finished:
                print("all pairs answered; Ctrl-C to finish (or Undo in the page)", flush=True)
                announced = True
    except KeyboardInterrupt:
        pass
    record = server.stop()
    print(_ranking(record), flush=True)
    if record["chosen"] is not None:
        print(best_summary(config, export_best(config, study, store)), flush=True)
    return 0


def _ranking(record: dict) -> str:
    if not record["choices"]:
        return "review: no choice made; best.* is unchanged"
    lines = [f"review: {len(record['choices'])} choices over {len(record['candidates'])} candidates "
             f"({record['model']}):"]
    for row in record["ranking"]:
        lines.append(f"  {row['label']}: trial {row['trial']:>4}  strength {row['strength']:.3f}  "
                     f"won {row['wins']}, lost {row['losses']}")
    return "\n".join(lines)
