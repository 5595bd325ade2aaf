"""Compare's token heatmap and the blind Arena in a real headless Chromium, clicked by their visible
labels: the heatmap colours each reply token, its hover card shows both distributions' top tokens and
the first greedy divergence is marked; the Arena shows A and B without names until the vote."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer, make_settings
from tests.test_browser import ARGS, CHROMIUM, REQUIRED, pytestmark  # noqa: F401 - the same skip and slow mark


@pytest.fixture(scope="module")
def page(cache_dir):
    if REQUIRED:
        from playwright import sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with LiveServer(make_settings(cache_dir=cache_dir, request_log="")) as srv, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(srv.url, wait_until="load")
        pg.wait_for_selector("#api-note")
        yield pg
        browser.close()


def set_number(page, label: str, value: str) -> None:
    box = page.locator(f"input[aria-label='number input for {label}']:visible")
    box.fill(value)
    box.press("Enter")


def choose(page, label: str, value: str) -> None:
    """A dropdown that takes typed values: type it, press Enter."""
    box = page.get_by_label(label)
    box.click()
    box.fill(value)
    box.press("Enter")


def test_compare_colours_every_reply_token_by_its_divergence(page, shots):
    page.get_by_role("tab", name="Compare").click()
    set_number(page, "Max new tokens", "20")
    choose(page, "Reference for token divergence", "llamacpp:Q8_0")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_selector("#compare-divergence :text-matches('identical|diverge')", timeout=300_000)
    page.get_by_role("button", name="Token divergence").click()
    page.wait_for_selector("#heat-1 .tok", timeout=300_000)
    same, other = page.locator("#heat-0").inner_text(), page.locator("#heat-1").inner_text()
    assert "llamacpp:Q8_0 vs llamacpp:Q8_0" in same and "never leaves the reference" in same
    assert "llamacpp:Q4_0 vs llamacpp:Q8_0" in other and "KLD mean" in other
    klds = [float(k) for k in page.locator("#heat-1 .tok").evaluate_all("els => els.map(e => e.dataset.kld)")]
    assert max(klds) > 0 and page.locator("#heat-0 .tok").count() > 0
    colours = page.locator("#heat-1 .tok").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(colours)) > 3  # tokens are coloured by their own KLD
    # hover the most divergent token: both distributions' top tokens
    worst = page.locator("#heat-1 .tok").nth(klds.index(max(klds)))
    tip = worst.locator(".tip")
    assert not tip.is_visible()
    worst.hover()
    tip.wait_for(state="visible")
    assert "(reference)" in tip.inner_text() and "KLD" in tip.inner_text()
    first = page.locator("#heat-1 .tok.first")
    if "first leaves the reference" in other:
        assert first.count() == 1 and page.locator("#heat-1 .first-mark").count() == 1
    page.locator("#heat-1").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "compare-token-divergence.png"), full_page=True)


def test_the_arena_hides_the_names_until_the_vote(page, shots):
    page.get_by_role("tab", name="Arena").click()
    set_number(page, "Max new tokens", "16")
    vote_a = page.get_by_role("button", name="A is better")
    assert vote_a.is_disabled()
    page.get_by_role("button", name="Play a round").click()
    page.wait_for_selector("#arena-status :text('Vote to see')", timeout=300_000)
    assert vote_a.is_enabled()
    blind = " ".join(page.locator(s).inner_text() for s in ("#arena-a", "#arena-b", "#arena-status", "#arena-reveal"))
    assert "A" in blind and "B" in blind
    assert "Q8_0" not in blind and "Q2_K" not in blind and "MiB" not in blind, blind
    page.screenshot(path=str(shots / "arena-blind.png"), full_page=True)
    vote_a.click()
    page.wait_for_selector("#arena-reveal :text('was')")
    reveal = page.locator("#arena-reveal").inner_text()
    assert "llamacpp:Q8_0" in reveal and "llamacpp:Q2_K" in reveal and "MiB" in reveal and "tok/s" in reveal
    assert vote_a.is_disabled()  # one vote per round
    table = page.locator("#arena-results").inner_text()
    assert "llamacpp:Q2_K" in table and "llamacpp:Q8_0" in table and "win rate" in table
    page.screenshot(path=str(shots / "arena-revealed.png"), full_page=True)
