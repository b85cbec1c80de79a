"""Where the local registry lives and how named remotes are configured.

The home is ``--home DIR``, else ``$ADAPTERHUB_HOME``, else ``~/.adapterhub``. It holds ``registry.db``
(SQLite), ``blobs/`` and ``tmp/`` (the local ``file`` store), ``cache/`` and ``config.json``.
"""

from __future__ import annotations

import os


def home_dir(home: str | None = None) -> str:
    path = home or os.environ.get("ADAPTERHUB_HOME") or os.path.join(os.path.expanduser("~"), ".adapterhub")
    return os.path.abspath(os.path.expanduser(path))


def local_db_url(home: str) -> str:
    return "sqlite:///" + os.path.join(home, "registry.db")


def cache_dir(home: str, kind: str) -> str:
    return os.path.join(home, "cache", kind)
