"""A learner in Chromium trains a tokenizer on their own file, watches it finish, steps through
its merges and downloads it: daphne, a real Celery worker and Redis behind the page.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect
from tokenizers import Tokenizer

from tests.browser.conftest import course_with_worker, sign_up
from tests.jobs.conftest import TINY_TEXT


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with course_with_worker(tmp_path_factory.mktemp("lab"), "browser") as url:
        yield url


def test_train_a_tokenizer_on_an_upload_watch_it_step_through_merges_and_download(
    page: Page, lab_server: str, console_errors: list[str], tmp_path
):
    sign_up(page, lab_server, "tokenizer-fan", "/learn/train-your-own-tokenizer/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Train your own tokenizer")

    # Record any polling of the job: while its websocket is open there should be none.
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.headers.get("hx-request") and r.method == "GET" else None)
    page.evaluate("window.__stillTheSamePage = true")

    lab = page.locator("#tokenizer-lab")
    lab.get_by_role("radio", name="A text file of your own").check()
    lab.get_by_label("Vocabulary size").fill("300")
    lab.get_by_label("Your text file", exact=False).set_input_files(
        {"name": "cats.txt", "mimeType": "text/plain", "buffer": TINY_TEXT.encode()}
    )
    lab.get_by_test_id("train").click()

    status = page.get_by_test_id("job-status")
    expect(status).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(status).to_contain_text("“cats.txt”, vocabulary 300")
    assert page.evaluate("window.__stillTheSamePage") is True  # all of it without a page load
    assert polls == []  # the result came over the websocket

    # Step through the merges: the sample sentence re-tokenizes at each step.
    stepper = page.get_by_test_id("merge-stepper")
    expect(stepper.get_by_test_id("merge-now")).to_contain_text("Before any merge")
    counts = [int(stepper.get_by_test_id("stepped-count").inner_text().split()[0])]
    for step, merged in [(1, "at"), (2, None), (3, None)]:
        page.get_by_test_id("next-merge").click()
        expect(page.get_by_test_id("merge-now")).to_contain_text(f"Merge {step}:")
        if merged:
            expect(page.get_by_test_id("merge-now")).to_contain_text(f"→ {merged}")
        counts.append(int(page.get_by_test_id("stepped-count").inner_text().split()[0]))
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    expect(page.locator(".merge-stepper .tok.is-new").first).to_be_visible()

    # Three tokenizers side by side on the same text.
    expect(page.get_by_test_id("compare-count")).to_have_count(3)

    with page.expect_download() as download_info:
        page.get_by_test_id("download").click()
    download = download_info.value
    assert download.suggested_filename == "tokenizer.json"
    saved = tmp_path / "tokenizer.json"
    download.save_as(saved)
    tokenizer = Tokenizer.from_file(str(saved))
    assert tokenizer.get_vocab_size() == int(page.get_by_test_id("vocab-size").inner_text().replace(",", ""))

    # The job is on My jobs too.
    page.get_by_role("navigation", name="Account").get_by_role("link", name="My jobs").click()
    expect(page.get_by_test_id("job-row")).to_have_attribute("data-status", "succeeded")
    assert console_errors == []
