"""The Imatrix, Fit and Report tabs in a real headless Chromium: compute an importance matrix from an
uploaded calibration text, get the fit advice and load the recommendation with one click, make an
evaluated variant's report card and download it. Screenshots go to $QUANTLAB_SCREENSHOTS or a tmp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import ModelSpec
from backends.files import imatrix_file
from tests.test_browser import ARGS, CHROMIUM, REQUIRED, pytestmark  # noqa: F401 (slow, skipped without Chromium)


@pytest.fixture(scope="module")
def server(live_app):
    """The shared app; the Fit tab's one-click load changes its model, so it is put back after."""
    yield live_app
    live_app.manager.load(ModelSpec(source="embedded", backend="llamacpp", n_ctx=2048))


@pytest.fixture(scope="module")
def page(server):
    if REQUIRED:
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.set_default_timeout(120_000)
        pg.goto(server.url, wait_until="load")
        pg.wait_for_selector("#model-badge :text('Serving')")
        yield pg
        browser.close()


def upload(page, box: str, path: Path, tries: int = 3) -> None:
    """Choose ``path`` in the file box ``box`` as a user would, and wait until the box names it. A tab
    just opened on a loaded machine can show its box before the box listens for a choice (the choice
    is then lost, as a user's first click can be): the user chooses again, and so does this."""
    page.locator(box).get_by_text("Click to Upload").wait_for(state="visible")
    for attempt in range(tries):
        page.locator(f"{box} input[type=file]").set_input_files(str(path))
        try:
            page.wait_for_function("([box, name]) => document.querySelector(box).innerText.includes(name)",
                                   arg=[box, path.name], timeout=30_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise


def test_compute_an_importance_matrix_from_an_uploaded_text(page, shots, tmp_path):
    calib = tmp_path / "calibration.txt"  # the text tests/test_lab_imatrix.py calibrates on: its matrix and variants are reused
    calib.write_text(imatrix_file.default_calibration_text()[:5_000], encoding="utf-8")
    page.get_by_role("tab", name="Imatrix").click()
    upload(page, "#imatrix-calibration", calib)
    page.click("#imatrix-run")
    page.wait_for_selector("#imatrix-status :text('Importance matrix ready')", timeout=300_000)
    status = page.locator("#imatrix-status").inner_text()
    assert "calibration.txt" in status and f"{calib.stat().st_size:,} bytes" in status and "chunks of 512" in status
    # what it buys: Q2_K with and without it, on the default (held-out) text
    page.locator("#imatrix-types .token", has_text="Q3_K_M").locator(".token-remove").click()
    tokens = page.locator("input[aria-label='number input for Tokens to score']")
    tokens.fill("256")
    tokens.press("Enter")
    page.click("#imatrix-gain-run")
    page.wait_for_selector("#imatrix-provenance :text('Provenance')", timeout=600_000)
    gain = page.locator("#imatrix-gain").inner_text()
    assert "Q2_K" in gain and "Q3_K_M" not in gain
    prov = page.locator("#imatrix-provenance").inner_text()
    assert "Q2_K+imatrix" in prov and "calibration.txt" in prov
    page.screenshot(path=str(shots / "lab-imatrix.png"), full_page=True)


def test_evaluate_then_make_and_download_the_report_card(page, shots, server):
    from gradio_client import Client

    c = Client(server.url, verbose=False)
    try:
        rows = c.predict(["llamacpp:Q8_0"], "", 128, "embedded", "llamacpp:F16", 128, "all", api_name="/evaluate")
    finally:
        c.close()
    q8 = next(r for r in rows if r["variant"] == "llamacpp:Q8_0")
    page.get_by_role("tab", name="Report").click()  # the tab lists what was evaluated when opened
    page.wait_for_function("() => document.querySelector('#report-variant input').value.length > 0")
    box = page.locator("#report-variant input")
    box.fill("llamacpp:Q8_0")
    box.press("Enter")
    page.click("#report-run")
    page.wait_for_selector("#report-preview :text('KLD mean vs reference')")
    preview = page.locator("#report-preview").inner_text()
    assert f"{q8['kld_mean']:.4f}" in preview and f"{q8['ppl']:.2f}" in preview
    assert page.locator("#report-preview img").count() == 1  # the Evaluate plot, shown in the preview
    with page.expect_download() as dl:
        page.locator("#report-md a").first.click()
    saved = Path(dl.value.path()).read_text()
    assert saved.startswith("# ") and f"| KLD mean vs reference | {q8['kld_mean']:.4f} |" in saved
    assert "](evaluate.png)" in saved  # the image file sits next to it
    page.screenshot(path=str(shots / "lab-report.png"), full_page=True)


def test_fit_advice_and_one_click_load(page, shots):
    page.get_by_role("tab", name="Fit").click()
    budget = page.locator("#fit-budget textarea, #fit-budget input").first
    budget.fill("300")
    page.click("#fit-run")
    page.wait_for_selector("#fit-summary :text('Recommended')")
    summary = page.locator("#fit-summary").inner_text()
    assert "300 MiB budget" in summary
    table = page.locator("#fit-table").inner_text()
    assert "★" in table and "not measured yet" in table
    page.screenshot(path=str(shots / "lab-fit.png"), full_page=True)
    pick = summary.split("Recommended: ", 1)[1].split(" ", 1)[0]  # e.g. llamacpp:Q8_0
    page.click("#fit-load")
    page.wait_for_selector("#fit-status :text('Loaded')", timeout=300_000)
    quant = pick.split(":", 1)[1].split("+kv:")[0]
    assert quant in page.locator("#fit-status").inner_text()
    page.wait_for_selector(f"#model-badge :text('{quant}')", timeout=30_000)  # the chat serves it now
    page.screenshot(path=str(shots / "lab-fit-loaded.png"), full_page=True)
