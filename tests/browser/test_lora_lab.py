"""A learner in Chromium fine-tunes the course model with LoRA, watches the loss curve grow,
downloads the adapter and tries it beside the base model: daphne, a real Celery worker, the
real model server and Redis behind the page.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import course_with_worker, sign_up

pytestmark = pytest.mark.usefixtures("model_server")

# Small enough for seconds on two cores, long enough for the curve to be drawn several times.
TINY = {"Rank": "4", "Alpha": "8", "Maximum number of steps": "10", "Sequence length": "64", "Batch size": "2",
        "Checkpoint interval": "5"}  # fmt: skip

# Every distinct shape of the training curve the page shows, whatever swaps it in.
RECORD_CURVES = """() => {
  window.__curves = [];
  const seen = () => {
    for (const line of document.querySelectorAll('[data-testid=curve-train]')) {
      const points = line.getAttribute('points');
      if (points && !window.__curves.includes(points)) window.__curves.push(points);
    }
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with course_with_worker(tmp_path_factory.mktemp("lora-lab"), "browser-lora") as url:
        yield url


def test_fine_tune_watch_the_curve_download_and_compare_with_the_base_model(
    page: Page, lab_server: str, console_errors: list[str], tmp_path
):
    sign_up(page, lab_server, "lora-fan", "/learn/fine-tuning-job/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Inside a fine-tuning job")

    lab = page.locator("#lora-lab")
    # The lesson asks for the question-answer set: it comes preselected.
    expect(lab.get_by_role("radio", name="Questions and answers about this course (chat)")).to_be_checked()
    for label, value in TINY.items():
        lab.get_by_label(label, exact=True).fill(value)
    expect(lab.get_by_test_id("qlora-help")).to_contain_text("GPU")

    # The preview shows the settings and the first examples before anything runs.
    lab.get_by_test_id("preview").click()
    expect(page.get_by_test_id("preview-steps")).to_contain_text("10")
    example = page.get_by_test_id("preview-example").first
    expect(example).to_contain_text("assistant")  # rendered with the model's chat template
    # Only the answers carry loss: both kinds of token are marked.
    expect(example.locator("span.loss").first).to_be_visible()
    expect(example.locator("span.no-loss").first).to_be_visible()

    page.evaluate(RECORD_CURVES)
    page.evaluate("window.__stillTheSamePage = true")
    page.locator("#lora-lab").get_by_test_id("train").click()

    status = page.get_by_test_id("job-status")
    expect(status).to_have_attribute("data-status", "running", timeout=60_000)
    expect(status).to_have_attribute("data-status", "succeeded", timeout=120_000)
    assert page.evaluate("window.__stillTheSamePage") is True  # all of it without a page load
    curves = page.evaluate("window.__curves")
    # The curve was drawn while the job ran and grew point by point, not once at the end.
    assert len(curves) >= 3, curves
    assert len(curves[-1].split()) == 10 and len(curves[0].split()) < len(curves[-1].split())
    expect(page.get_by_test_id("curve-val")).to_be_visible()
    final = float(page.get_by_test_id("final-val-loss").inner_text())
    assert 0 < final < 20

    with page.expect_download() as download_info:
        page.get_by_test_id("download").first.click()
    download = download_info.value
    assert download.suggested_filename == "adapter.zip"
    saved = tmp_path / "adapter.zip"
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(archive.namelist())
        assert json.loads(archive.read("adapter_config.json"))["r"] == 4

    # Try it: the same prompt on the base model and on the adapter, streamed side by side.
    page.goto(lab_server + "/learn/lora/")
    widget = page.locator("section.adapter-compare")
    expect(widget.get_by_test_id("model-status")).to_contain_text("Model ready", timeout=15_000)
    expect(widget.get_by_test_id("model-choice").locator("option").first).to_contain_text("Your adapter")
    widget.locator("textarea[name=prompt]").fill("What is a token?")
    widget.locator("input[name=chat]").check()
    widget.locator("input[name=max_tokens]").fill("12")
    widget.get_by_role("button", name="Compare").click()
    expect(widget.get_by_test_id("compare-base-done")).to_be_visible(timeout=60_000)
    expect(widget.get_by_test_id("compare-adapter-done")).to_be_visible(timeout=60_000)
    assert widget.get_by_test_id("compare-base").inner_text().strip()
    assert widget.get_by_test_id("compare-adapter").inner_text().strip()
    # Both next-token distributions, and the tokens whose probability moved most.
    first = widget.get_by_test_id("compare-first")
    expect(first).to_contain_text("Base model", timeout=30_000)
    expect(first).to_contain_text("Your adapter")
    expect(widget.get_by_test_id("compare-moved").locator("tbody tr").first).to_contain_text("points")
    assert console_errors == []
