"""The web UI in a real headless Chromium (Debian's, driven by Playwright) against a real ``adapterhub serve``:
sign-in through the form, every page without console errors, the lineage graph's nodes, edges and click
navigation, the loss chart, the same data as tables with JavaScript off, and namespace isolation. One browser for the module; the server and registry
(``web_hub``, tests/webhub.py) are shared with tests/test_web.py."""

from __future__ import annotations

import os
import re

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(web_hub):
    if not os.path.exists(CHROMIUM):
        pytest.fail("the web UI's browser tests need Debian's chromium: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield {**web_hub, "browser": browser}
        finally:
            browser.close()


def open_session(site, role: str, height: int = 900, javascript: bool = True):
    """A fresh browser context signed in through the form as ``role``; returns (page, console errors)."""
    context = site["browser"].new_context(viewport={"width": 1280, "height": height}, java_script_enabled=javascript)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + "/models/acme/chat")
    assert "/login" in page.url
    page.fill("input[name=token]", site["tokens"][role])
    page.click("button[type=submit]")
    page.wait_for_url(site["url"] + "/models/acme/chat")
    return page, errors


def test_every_page_loads_without_console_errors(site):
    page, errors = open_session(site, "admin")
    for path in (
        "/",
        "/?q=canary",
        "/models/acme/chat",
        "/models/acme/chat/2",
        "/models/acme/mix/1",
        "/models/acme/cross/1",
        "/models/acme/stack/1",
        "/models/acme/tuned/1",
        "/aliases/acme/chat/production",
        "/compare?a=acme/chat:1&b=acme/chat:2",
        "/audit",
    ):
        response = page.goto(site["url"] + path)
        page.wait_for_load_state("load")
        assert response.status == 200, path
        assert page.locator("h1").first.inner_text().strip(), path
    assert errors == []
    assert page.context.cookies()[0]["httpOnly"] is True
    session = next(c for c in page.context.cookies() if c["name"] == "ahub_session")
    assert session["sameSite"] == "Strict" and site["tokens"]["admin"].split("_", 2)[2] not in session["value"]


def test_lineage_graph_has_the_edges_and_a_click_opens_the_parent(site):
    page, errors = open_session(site, "read", height=2000)  # the graph in view: no scrolling before the click
    page.goto(site["url"] + "/models/acme/mix/1")
    page.wait_for_selector("#lineage[data-ready='1']")
    graph = page.evaluate("""() => { const cy = window.adapterhubLineage; return {
        nodes: cy.nodes().map(n => n.id()).sort(),
        edges: cy.edges().map(e => [e.source().id(), e.target().id(), e.data('label')]).sort()}; }""")
    assert graph["nodes"] == ["acme/chat:1", "acme/chat:2", "acme/mix:1"]
    assert graph["edges"] == [
        ["acme/chat:1", "acme/mix:1", "combined_from w=0.7"],
        ["acme/chat:2", "acme/mix:1", "combined_from w=0.3"],
    ]
    box = page.locator("#lineage canvas").first.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 100
    page.locator("#lineage").scroll_into_view_if_needed()
    # A real click on the node. cytoscape caches where its box is; on a loaded machine the page may still be
    # moving when the graph is ready, so make it re-read its box, wait two frames, and click where the node is
    # now; a click that landed before the page settled is tried again (three times at most).
    from playwright.sync_api import TimeoutError

    for attempt in range(3):
        page.evaluate("""() => new Promise(r => { window.adapterhubLineage.resize();
            requestAnimationFrame(() => requestAnimationFrame(r)); })""")
        x, y = page.evaluate("""() => { const p = window.adapterhubLineage.getElementById('acme/chat:2')
            .renderedPosition(); return [p.x, p.y]; }""")
        origin = page.locator("#lineage").bounding_box()
        try:
            with page.expect_navigation(url=site["url"] + "/models/acme/chat/2", timeout=5_000):
                page.mouse.click(origin["x"] + x, origin["y"] + y)
            break
        except TimeoutError:  # playwright's TimeoutError
            if attempt == 2:
                raise
    assert re.search(r"acme/chat\s*:2", page.locator("h1").inner_text())
    assert errors == []


def test_the_loss_chart_is_drawn(site):
    page, errors = open_session(site, "read")
    page.goto(site["url"] + "/models/acme/tuned/1")
    canvas = page.locator("#loss-chart canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    assert box["width"] > 200 and box["height"] > 100
    # uPlot drew the series: the canvas holds non-background pixels
    drawn = page.evaluate("""() => { const c = document.querySelector('#loss-chart canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert drawn > 500
    legend = page.locator("#loss-chart").inner_text()
    assert "training loss" in legend and "eval loss" in legend
    assert errors == []


def test_without_javascript_the_tables_carry_the_same_data(site):
    page, errors = open_session(site, "read", javascript=False)  # the sign-in form is a plain POST
    page.goto(site["url"] + "/models/acme/tuned/1")
    assert page.locator("#loss-chart canvas").count() == 0  # no chart drawn: the losses are a table
    assert page.locator("noscript table tr").count() == 1 + 9  # 6 training losses and 3 eval losses
    page.goto(site["url"] + "/models/acme/mix/1")
    assert page.locator("#lineage canvas").count() == 0  # no graph drawn ...
    edges = page.locator("#lineage-edges tbody tr").all_inner_texts()  # ... the table has its edges
    assert edges == ["acme/mix:1\tcombined_from w=0.7\tacme/chat:1", "acme/mix:1\tcombined_from w=0.3\tacme/chat:2"]
    page.locator("#lineage-edges a", has_text="acme/chat:2").click()
    page.wait_for_url(site["url"] + "/models/acme/chat/2")
    assert errors == []


def test_a_namespace_bound_session_sees_only_its_namespace(site):
    page, errors = open_session(site, "acme")
    page.goto(site["url"] + "/")
    names = page.locator("#models tbody td:first-child").all_inner_texts()
    assert names == ["acme/chat", "acme/cross", "acme/mix", "acme/stack", "acme/tuned"]
    assert page.goto(site["url"] + "/models/other/secret/1").status == 404
    assert "other/secret" not in page.content()
    page.goto(site["url"] + "/models/acme/cross/1")
    page.wait_for_function("window.adapterhubLineage && window.adapterhubLineage.nodes().length > 0")
    labels = page.evaluate("() => window.adapterhubLineage.nodes().map(n => n.data('label'))")
    assert "outside your namespace" in labels and not any("other" in label for label in labels)
    assert not [e for e in errors if "404" not in e]  # the 404 page itself is the only error logged
