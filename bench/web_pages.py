"""The web UI with a name of 10,000 versions (bulk-inserted rows, as ``publish`` writes them) behind a real
``adapterhub serve``: median and max of 10 requests per page, signed in with a read token.

    python bench/web_pages.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

PAGES = ("/models/bulk/many", "/models/bulk/many?page=200", "/", "/models/bulk/many/1")


def main() -> None:
    import sqlalchemy as sa
    from serverproc import RegistryServer
    from test_web import Client
    from webhub import cli_in, make_lora_dir, token

    from adapterhub.api import local_registry
    from adapterhub.registry import schema as t
    from adapterhub.registry.records import now

    with tempfile.TemporaryDirectory(prefix="adapterhub-web-bench-") as tmp:
        home = os.path.join(tmp, "home")
        cli_in(home)("push", make_lora_dir(os.path.join(tmp, "a")), "bulk/many")
        reg = local_registry(home)
        with reg.write() as conn:
            v1 = conn.execute(sa.select(t.versions)).one()
            manifest = json.dumps({"method": "lora", "task": "causal-lm"})
            conn.execute(
                t.versions.insert(),
                [
                    {
                        "adapter_id": v1.adapter_id,
                        "number": n,
                        "digest": f"{n:064x}",
                        "kind": "adapter",
                        "method": "lora",
                        "manifest": manifest,
                        "size": 1,
                        "created_at": now(),
                        "created_by": "bulk",
                    }
                    for n in range(2, 10_001)
                ],
            )
        reg.close()
        tok = token(home, "bench-reader", "read")
        with RegistryServer(env={"ADAPTERHUB_HOME": home}) as srv:
            client = Client(srv.url)
            client.login(tok)
            for path in PAGES:
                client.get(path)
                times = []
                for _ in range(10):
                    start = time.perf_counter()
                    status, _, body = client.get(path)
                    times.append(time.perf_counter() - start)
                    assert status == 200, (path, status)
                times.sort()
                print(f"{path}: median {times[5] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms ({len(body)} bytes)")


if __name__ == "__main__":
    main()
