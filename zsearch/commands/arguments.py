"""Arguments several sub-commands share, so each follows one rule and says it one way.

Not a sub-command: cli.COMMAND_MODULES does not list it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsearch.util.paths import native_path

CONFIG_HELP = "the search config (YAML), e.g. configs/style.yaml"
PORT_HELP = "port on 127.0.0.1, 1-65535, or 0 for any free one (default 8080)"


def port_number(text: str) -> int:
    """A TCP port: 1-65535, or 0 for any free port (the server says which it got)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1-65535, or 0 for any free one)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number; use 1-65535 (e.g. 8080), or 0 for any free one")
    return port


def input_path(text: str) -> Path:
    """A file or folder the user names on the command line; `loras\\a.safetensors` reads as on Windows."""
    return native_path(text)


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=input_path, help=CONFIG_HELP)


def add_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=port_number, default=8080, help=PORT_HELP)


def dashboard_server(storage, store, port: int):
    """optuna-dashboard's app on 127.0.0.1:`port` (0: any free port), threaded and without access
    lines: the page polls every few seconds, and one terminal line per request buries the rest."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard

    from zsearch.errors import UserError

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class Threading(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        return make_server("127.0.0.1", port, app, server_class=Threading, handler_class=Quiet)
    except OSError as exc:
        raise UserError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror or exc}); pick another --port") from None
