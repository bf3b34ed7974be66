"""optuna-dashboard serving the review on 127.0.0.1, with the review's step loop beside it."""

from __future__ import annotations

import logging
import threading
from typing import Optional

from zsearch.errors import UserError
from zsearch.review.study import Review

log = logging.getLogger("zsearch")


class ReviewServer:
    """optuna-dashboard on 127.0.0.1 (a thread) and the review's step loop (another thread)."""

    def __init__(self, review: Review, storage, store, port: int = 8080, interval: float = 0.5):
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        import optuna_dashboard

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):  # the dashboard polls; one line per request is noise
                pass

        class Threading(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        self.review = review
        self.interval = interval
        app = optuna_dashboard.wsgi(storage, artifact_store=store)
        try:
            self.server = make_server("127.0.0.1", port, app, server_class=Threading, handler_class=Quiet)
        except OSError as exc:
            raise UserError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); pick another --port") from None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                         threading.Thread(target=self._loop, daemon=True)]
        self.error: Optional[BaseException] = None

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard/studies/{self.review.study_id}"  # a preferential study's page

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.review.step()
            except Exception as exc:  # noqa: BLE001 - reported by wait()/stop(); the server stays up
                self.error = exc
                log.warning("review: %s", exc)
            self._stop.wait(self.interval)

    def start(self) -> "ReviewServer":
        self.review.step()  # the first pair is on show before the first page load
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        return self.review.sync()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
