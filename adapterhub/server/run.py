"""Start the registry server: check the registry, bind the socket, then run uvicorn's workers.

The registry is opened (and migrated) once in this process before anything listens, so a bad database
URL or an unreachable store is one error line, not a crash loop of workers. Each worker builds its own
app with :func:`adapterhub.server.app.create_app_from_env` from the environment set here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: uvicorn's own logs: warnings and errors only (one line per request is the audit log's job)
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "adapterhub.server": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}


def serve(
    home: str | None, host: str, port: int, workers: int, max_blob_size: int, describe: str, echo: Any = print
) -> None:
    """Serve the registry named by ``home`` / the environment on ``host:port`` until interrupted."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from ..api import open_registry

    if home:
        os.environ["ADAPTERHUB_HOME"] = os.path.abspath(home)
    os.environ["ADAPTERHUB_SERVER_MAX_BLOB_SIZE"] = str(int(max_blob_size))
    reg = open_registry(home)
    try:
        reg.ready()
        reg.store.has("0" * 64)
    finally:
        reg.close()

    config = uvicorn.Config(
        "adapterhub.server.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=LOG_CONFIG,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=64 * 1024,
    )
    sock = config.bind_socket()
    bound = sock.getsockname()[1]
    echo(
        f"adapterhub serve: listening on http://{host}:{bound} ({describe}; {workers} worker"
        f"{'s' if workers != 1 else ''}; docs at /docs)"
    )
    sys.stdout.flush()
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])
