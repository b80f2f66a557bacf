"""Run the app under uvicorn; SIGTERM drains in-flight requests (graceful shutdown)."""

from __future__ import annotations

import json
import logging
import sys

from rare.settings import Settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a dict message (the access log) is merged in as fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name}
        if isinstance(record.msg, dict):
            out.update(record.msg)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def serve(settings: Settings) -> None:
    import uvicorn

    from service.app import create_app

    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app writes one structured line per request itself
        log_config=None,  # uvicorn's own lines go through the JSON formatter above
        timeout_graceful_shutdown=30,
    )
