"""Regenerate the README's screenshots of the web UI: a registry built with the real CLI (the tests'
``tests/webhub.py``), a real ``adapterhub serve``, Debian's chromium through Playwright.

    python scripts/screenshots.py            # writes docs/web-version.png and docs/web-lineage.png
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def more(home: str, work: str) -> None:
    """Beyond the tests' registry: acme/tuned:2 trained on from acme/tuned:1, evaluated, promoted, and
    combined with its parent (a version page with a loss curve, an evaluation and a lineage both ways)."""
    from webhub import cli_in, train

    run = cli_in(home)
    train(run, work, 12, "--init-from", "acme/tuned:1", "--seed", "3")
    run("combine", "acme/tuned:1", "acme/tuned:2", "--weights", "0.4,0.6", "--name", "acme/tuned-soup")
    data = os.path.join(work, "eval.jsonl")
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"text": f"the cat number {i % 4} sat on the mat and it was happy"}) + "\n")
    run("eval", "acme/tuned:2", "--base", os.path.join(work, "tiny-llama"), "--data", data)
    run("alias", "set", "acme/tuned", "production", "2", "--reason", "lower eval loss than the base")


def main() -> None:
    from playwright.sync_api import sync_playwright
    from serverproc import RegistryServer
    from webhub import build

    out = os.path.join(ROOT, "docs")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adapterhub-shots-") as tmp:
        home = os.path.join(tmp, "home")
        tokens = build(home, tmp)
        more(home, tmp)
        with RegistryServer(env={"ADAPTERHUB_HOME": home}) as srv, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(srv.url + "/login")
            page.fill("input[name=token]", tokens["read"])
            page.click("button[type=submit]")
            page.wait_for_load_state("load")
            page.goto(srv.url + "/models/acme/tuned/2")  # trained on from acme/tuned:1, evaluated, in production
            page.wait_for_selector("#lineage[data-ready='1']")
            page.locator("#loss-chart canvas").wait_for()
            page.screenshot(path=os.path.join(out, "web-version.png"), full_page=True)
            page.goto(srv.url + "/models/acme/chat/1")  # combined, composed and combined across namespaces
            page.wait_for_selector("#lineage[data-ready='1']")
            page.locator("#lineage").scroll_into_view_if_needed()
            page.locator("#lineage").screenshot(path=os.path.join(out, "web-lineage.png"))
            browser.close()
    print(f"wrote {out}/web-version.png and {out}/web-lineage.png")


if __name__ == "__main__":
    main()
