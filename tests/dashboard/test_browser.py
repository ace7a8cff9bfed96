"""The dashboard in a real headless chromium: every page renders its content with no exception
box (screenshots under test-output/screenshots), a deployment is rolled back by a click, and three
items of a queue are labelled from the keyboard while the agreement table follows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.dashboard.browser import (
    chromium,
    no_exception,
    open_page,
    screenshot,
    settle,
    start_dashboard,
)
from tests.dashboard.conftest import QUEUE, Seeded

# One test process for the seeded server, under --dist loadgroup (see tests/dashboard/conftest.py).
pytestmark = pytest.mark.xdist_group("dashboard")

PAGES = [
    ("", "overview", "Latest evaluations"),
    ("registry", "registry", "Versions of"),
    ("evaluations", "evaluations", "Cases side by side"),
    ("human_eval?queue=json-quality", "human-eval", "Judges against humans"),
    ("finetuning", "finetuning", "Start a job"),
    ("experiments", "experiments", "of every scored checkpoint"),
    ("deployments", "deployments", "The controller's decisions"),
    ("monitoring", "monitoring", "Alerts"),
]
NAVIGATION = {"Overview", "Registry", "Human evaluation", "Deployments and A/B", "Monitoring"}


@pytest.fixture(scope="module")
def browser_page(seeded: Seeded) -> Iterator[tuple[Any, str]]:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    dashboard = start_dashboard(seeded.url, seeded.admin)
    address = next(dashboard)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page, address
        browser.close()
    dashboard.close()


@pytest.mark.parametrize(("path", "name", "expect"), PAGES, ids=[p[1] for p in PAGES])
def test_every_page_renders_without_an_exception(
    browser_page: tuple[Any, str], path: str, name: str, expect: str
) -> None:
    page, address = browser_page
    open_page(page, address, path, expect)
    no_exception(page)
    assert "signed in as" in page.inner_text("body")
    assert set(page.locator('[data-testid="stSidebarNav"]').inner_text().split("\n")) >= NAVIGATION
    assert screenshot(page, name).stat().st_size > 10_000


def test_a_link_to_a_page_opened_first_shows_the_dashboards_navigation(
    browser_page: tuple[Any, str], seeded: Seeded
) -> None:
    """A fresh dashboard whose first request is a page's URL (a shared link) runs app.py's
    navigation, not one of bare file names."""
    browser = browser_page[0].context.browser
    dashboard = start_dashboard(seeded.url, seeded.viewer)
    address = next(dashboard)
    page = browser.new_page()
    try:
        open_page(page, address, "registry", "Versions of")
        shown = page.locator('[data-testid="stSidebarNav"]').inner_text().split("\n")
    finally:
        page.close()
        dashboard.close()
    assert set(shown) >= NAVIGATION, shown


def test_a_click_on_roll_back_restores_the_deployments_weights(
    browser_page: tuple[Any, str], seeded: Seeded
) -> None:
    page, address = browser_page
    admin = {"Authorization": f"Bearer {seeded.admin}"}
    url = f"{seeded.url}/api/v1/deployments/chat"
    arms = httpx.get(url, headers=admin).json()["arms"]
    shifted = [{**arm, "weight": 90 if arm["name"] == "control" else 10} for arm in arms]
    httpx.patch(url, json={"arms": shifted}, headers=admin).raise_for_status()
    open_page(page, address, "deployments", "The controller's decisions")
    page.get_by_role("button", name="Roll back", exact=True).click()
    page.get_by_text("rolled back to its previous arms").wait_for(timeout=30_000)
    settle(page)
    no_exception(page)
    weights = {a["name"]: a["weight"] for a in httpx.get(url, headers=admin).json()["arms"]}
    assert weights == {a["name"]: a["weight"] for a in arms}


def test_labelling_three_items_updates_the_agreement_table(
    browser_page: tuple[Any, str], seeded: Seeded
) -> None:
    page, address = browser_page
    admin = {"Authorization": f"Bearer {seeded.admin}"}
    agreement = f"{seeded.url}/api/v1/annotations/queues/{QUEUE}/agreement"
    before = httpx.get(agreement, headers=admin).json()["judges"][0]
    open_page(page, address, f"human_eval?queue={QUEUE}", "Judges against humans")
    for _ in range(3):
        shown = page.locator('[data-testid="stProgress"]').inner_text()
        position = page.get_by_text(re.compile(r"^item \d+ · ")).inner_text().split()[1]
        page.locator('[data-testid="stRadio"]').get_by_text("4", exact=True).click()
        page.get_by_label("Comment (optional; Enter saves)").press("Enter")  # the keyboard way
        page.get_by_text(f"labelled item {position}: 4").wait_for(timeout=30_000)
        settle(page)
        no_exception(page)
        assert page.locator('[data-testid="stProgress"]').inner_text() != shown
    after = httpx.get(agreement, headers=admin).json()["judges"][0]
    assert after["n"] == before["n"] + 3
    # The last rerun may still be on its way: Streamlit shows the previous table until it lands.
    interval = f"{after['raw']:.2f} [{after['raw_low']:.2f}, {after['raw_high']:.2f}]"
    judges = page.locator('[data-testid="stTable"]').first
    judges.filter(has_text=interval).wait_for(timeout=30_000)
    assert str(after["n"]) in judges.inner_text().split()
    screenshot(page, "human-eval-labelled")
