"""The quantization lab: the real model at 32, 8 and 4 bits with the real bitsandbytes, and its pages.

The model is loaded three times once for the whole test run (`comparison`); the pages' tests
store that result as a finished job, so only tests/jobs/test_quantization_worker.py runs the
comparison again, on the real worker.
"""

from __future__ import annotations

import math
import re
from importlib import metadata

import pytest
from django.conf import settings
from django.utils import timezone

from workers.jobs import quantization
from workers.jobs.quantization import comparison_params
from workers.models import Job
from workers.training import quantize
from workers.training.quantize import FP32, INT8, MAX_PROMPT_CHARS, ComparisonStopped, compare_quantizations

HTMX = {"HTTP_HX_REQUEST": "true"}
PROMPT = "The capital of France is"
NEW_TOKENS = 4  # few timed tokens: the tests measure that it works, not how fast
TOP_K = 5


@pytest.fixture(scope="session")
def comparison() -> quantize.ComparisonResult:
    stages = []
    result = compare_quantizations(
        settings.MODEL_PATH, PROMPT, NEW_TOKENS, TOP_K, threads=1, report=lambda stage, p: stages.append((stage, p))
    )
    result.stages = stages
    return result


@pytest.fixture(autouse=True)
def few_timed_tokens(monkeypatch):
    """The lab's submissions time as few tokens as the module's comparison, so they share its cache key."""
    monkeypatch.setattr(quantization, "DEFAULT_NEW_TOKENS", NEW_TOKENS)
    monkeypatch.setattr(quantization, "TOP_K", TOP_K)


def finished(owner, comparison, prompt: str = PROMPT) -> Job:
    """A succeeded comparison job of `owner`'s holding the module's result, as the runner stores it."""
    params = comparison_params(prompt, NEW_TOKENS, TOP_K)
    now = timezone.now()
    return Job.objects.create(
        owner=owner,
        kind=Job.Kind.QUANTIZATION,
        queue="cpu",
        params=params,
        status=Job.Status.SUCCEEDED,
        stage="Done",
        progress=1.0,
        metrics={**comparison.as_dict(), "model": params["model"]},
        started_at=now - timezone.timedelta(seconds=20),
        finished_at=now,
    )


# --- The measurements ---------------------------------------------------------------------------------


def test_fewer_bits_make_a_smaller_model_that_still_answers_paris(comparison):
    fp32, int8, nf4 = comparison.variants
    assert [v.name for v in comparison.variants] == ["fp32", "int8", "nf4"]
    assert all(v.ok for v in comparison.variants), [v.error for v in comparison.variants]
    assert fp32.footprint_bytes > int8.footprint_bytes > nf4.footprint_bytes
    assert 500e6 < fp32.footprint_bytes < 560e6  # 134.5 M parameters x 4 bytes
    # The linear layers are quantized; the shared embedding table and the norms stay at 32 bits.
    assert fp32.quantized_layers == 0 and int8.quantized_layers == nf4.quantized_layers > 200
    assert int8.kept_fp32_bytes == nf4.kept_fp32_bytes < fp32.kept_fp32_bytes
    for variant in comparison.variants:
        assert variant.candidates[0].text == " Paris" and variant.top1_changed is False
        assert variant.load_seconds > 0 and variant.tokens_per_second > 0
        assert variant.continuation.strip()


def test_kl_from_32_bits_is_zero_for_32_bits_and_positive_for_fewer(comparison):
    fp32, int8, nf4 = comparison.variants
    assert fp32.kl_from_fp32 == 0.0
    assert int8.kl_from_fp32 > 0 and nf4.kl_from_fp32 > 0
    assert all(math.isfinite(v.kl_from_fp32) for v in comparison.variants)
    assert fp32.p_fp32_top1 == pytest.approx(fp32.candidates[0].probability)


def test_the_candidates_are_a_sorted_slice_of_a_distribution(comparison):
    for variant in comparison.variants:
        probabilities = [c.probability for c in variant.candidates]
        assert len(probabilities) == TOP_K
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(p > 0 for p in probabilities) and sum(probabilities) <= 1 + 1e-9


def test_it_reports_progress_variant_by_variant_and_records_the_versions(comparison):
    stages = [stage for stage, _ in comparison.stages]
    progress = [p for _, p in comparison.stages]
    assert progress == sorted(progress) and progress[-1] == 1.0
    for bits in (32, 8, 4):
        assert f"Loading the model ({bits}-bit)" in stages
    assert f"Generating {NEW_TOKENS} tokens (4-bit)" in stages
    assert comparison.versions["bitsandbytes"] == metadata.version("bitsandbytes")
    assert comparison.prompt_tokens == 5 and comparison.new_tokens == NEW_TOKENS


@pytest.mark.parametrize(
    ("prompt", "new_tokens", "message"),
    [
        ("", 4, "Type a prompt"),
        ("   \n ", 4, "Type a prompt"),
        ("x" * (MAX_PROMPT_CHARS + 1), 4, f"{MAX_PROMPT_CHARS} characters or fewer"),
        (PROMPT, 0, "between 1 and"),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(prompt, new_tokens, message):
    with pytest.raises(ValueError, match=message):
        compare_quantizations(settings.MODEL_PATH, prompt, new_tokens)


def test_a_stop_request_ends_it_before_the_next_variant():
    with pytest.raises(ComparisonStopped):
        compare_quantizations(settings.MODEL_PATH, PROMPT, 2, should_stop=lambda: True)


def test_a_variant_that_cannot_load_is_explained_not_faked(monkeypatch):
    load = quantize.load_variant

    def no_int8(path, variant):
        if variant == INT8:
            raise RuntimeError("no 8-bit kernel for this processor")
        return load(path, variant)

    monkeypatch.setattr(quantize, "load_variant", no_int8)
    fp32, int8 = compare_quantizations(settings.MODEL_PATH, PROMPT, 1, 3, variants=(FP32, INT8), threads=1).variants
    assert fp32.ok and fp32.kl_from_fp32 == 0.0
    assert "could not load or run the 8-bit model" in int8.error and "no 8-bit kernel" in int8.error
    assert int8.footprint_bytes == 0 and int8.candidates == [] and int8.kl_from_fp32 is None


def test_the_callers_own_exception_is_not_taken_for_a_failed_variant():
    class Lost(Exception):
        pass

    def report(stage, progress):
        if "8-bit" in stage:
            raise Lost

    with pytest.raises(Lost):
        compare_quantizations(settings.MODEL_PATH, PROMPT, 1, 3, variants=(FP32, INT8), report=report, threads=1)


# --- The pages ---------------------------------------------------------------------------------------


def test_a_finished_comparisons_page_shows_the_table_and_the_candidates(owner, owner_client, comparison):
    job = finished(owner, comparison)
    html = owner_client.get(job.get_absolute_url()).content.decode()
    assert 'data-testid="quant-table"' in html
    assert re.findall(r'<tr data-variant="(\w+)">', html) == ["fp32", "int8", "nf4"]
    for variant in comparison.variants:
        assert f'data-testid="memory-{variant.name}">{variant.footprint_bytes / 1e6:.0f}' in html
        assert f'data-testid="speed-{variant.name}">{variant.tokens_per_second:.1f}<' in html
        assert f'data-testid="changed-{variant.name}">' in html
        column = re.search(rf'data-testid="candidates-{variant.name}">(.*?)</div>', html, re.S).group(1)
        assert column.count("<progress") == TOP_K and "␣Paris" in column
    assert f'data-testid="kl-int8">{comparison.variants[1].kl_from_fp32:.4f}<' in html
    assert 'data-testid="changed-nf4">no<' in html
    assert "<q>The capital of France is</q>" in html  # the job's params
    assert "ws-connect" not in html and 'data-testid="reused"' not in html


def test_my_jobs_sums_up_a_comparison(owner, owner_client, comparison):
    finished(owner, comparison)
    html = owner_client.get("/jobs/").content.decode()
    assert "“The capital of France is” at 32, 8 and 4 bits" in html
    int8 = comparison.variants[1]
    assert f"8-bit: {int8.footprint_bytes / 1e6:.0f} MB" in html and "min. frequency" not in html


def test_the_same_prompt_from_another_learner_is_copied_not_run(owner, classmate, classmate_client, comparison):
    original = finished(owner, comparison)
    response = classmate_client.post("/jobs/quantization/", {"prompt": f"  {PROMPT} "}, **HTMX)
    assert response.status_code == 200
    copy = Job.objects.get(owner=classmate)
    assert copy.status == "succeeded" and copy.pk != original.pk
    assert copy.params == original.params
    assert copy.metrics["variants"] == original.metrics["variants"]
    assert copy.metrics["reused"]["computed_at"] == original.finished_at.isoformat()
    html = response.content.decode()
    assert 'data-testid="reused"' in html and 'data-testid="quant-table"' in html
    assert str(original.code) not in html  # nothing of the other learner's job but its numbers

    # Asking again gives the learner the same job, not another copy; the original is untouched.
    again = classmate_client.post("/jobs/quantization/", {"prompt": PROMPT})
    assert again.status_code == 302 and again["Location"] == copy.get_absolute_url()
    assert Job.objects.filter(owner=classmate).count() == 1
    original.refresh_from_db()
    assert "reused" not in original.metrics


def test_a_new_prompt_is_queued_as_a_job(owner, owner_client, comparison):
    finished(owner, comparison)
    response = owner_client.post("/jobs/quantization/", {"prompt": "Two plus two is"}, **HTMX)
    assert response.status_code == 201
    job = Job.objects.get(owner=owner, status="queued")
    assert job.kind == "quantization" and job.queue == "cpu"
    assert job.params["prompt"] == "Two plus two is" and job.params["new_tokens"] == NEW_TOKENS
    assert f'ws-connect="/ws/jobs/{job.code}/"' in response.content.decode()


def test_a_prompt_is_shown_as_text_never_as_html(owner, owner_client):
    response = owner_client.post("/jobs/quantization/", {"prompt": "<b>Bold</b> & <script>x</script>"})
    html = owner_client.get(response["Location"]).content.decode()
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; &lt;script&gt;" in html and "<b>Bold" not in html


def test_a_new_comparison_counts_against_the_quota_but_a_cached_one_does_not(
    owner, classmate, owner_client, comparison, settings
):
    settings.JOB_MAX_ACTIVE_PER_USER = 1
    owner_client.post("/jobs/quantization/", {"prompt": "One"})
    response = owner_client.post("/jobs/quantization/", {"prompt": "Two"}, **HTMX)
    assert response.status_code == 400
    assert "You already have 1 job queued or running" in response.content.decode()
    finished(classmate, comparison, prompt="Three")
    assert owner_client.post("/jobs/quantization/", {"prompt": "Three"}, **HTMX).status_code == 200


def test_another_learners_comparison_stays_theirs(owner, classmate_client, comparison):
    job = finished(owner, comparison)
    assert classmate_client.get(job.get_absolute_url()).status_code == 404
    assert classmate_client.get(job.get_absolute_url(), **HTMX).status_code == 404
    assert classmate_client.post(f"/jobs/{job.code}/delete/").status_code == 404


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "Type a prompt: the model needs some text to continue."),
        ("   ", "Type a prompt: the model needs some text to continue."),
        ("y" * (MAX_PROMPT_CHARS + 1), f"Keep the prompt to {MAX_PROMPT_CHARS} characters or fewer (it has 301)."),
    ],
)
def test_a_bad_prompt_is_refused_with_a_message(owner, owner_client, prompt, message):
    response = owner_client.post("/jobs/quantization/", {"prompt": prompt}, **HTMX)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'data-testid="prompt-error"' in html and message in html
    assert not Job.objects.filter(owner=owner).exists()


def test_a_visitor_cannot_submit_but_sees_an_earlier_run(owner, client, comparison):
    response = client.post("/jobs/quantization/", {"prompt": PROMPT})
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert "HX-Redirect" in client.post("/jobs/quantization/", {"prompt": PROMPT}, **HTMX)
    assert not Job.objects.exists()

    html = client.get("/jobs/quantization/").content.decode()
    assert "quantization-form" not in html and "to run it on a prompt of your own" in html
    assert 'data-testid="quant-table"' not in html  # nothing computed yet
    job = finished(owner, comparison)
    html = client.get("/jobs/quantization/").content.decode()
    assert "An earlier run of this prompt" in html and 'data-testid="quant-table"' in html
    assert str(job.code) not in html


def test_the_lessons_embed_the_lab_with_their_prompt(course, owner_client, client):
    html = owner_client.get("/learn/eight-and-four-bits/").content.decode()
    assert 'id="quantization-lab"' in html and 'data-testid="quantization-form"' in html
    assert re.search(r'name="prompt"[^>]*>\s*My favourite colour is</textarea>', html)
    assert "coming soon" not in html.lower()
    visitor = client.get("/learn/numbers-in-a-computer/").content.decode()
    assert 'id="quantization-lab"' in visitor and "quantization-form" not in visitor
