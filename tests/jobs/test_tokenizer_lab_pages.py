"""The tokenizer lab's pages: the form, a finished job's results, stepping through merges, the comparison."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.jobs.conftest import TINY_TEXT
from workers.inference.tokenizer import course_tokenizer
from workers.jobs import files, trained_tokenizers_for
from workers.jobs.tokenizer import DEFAULT_SAMPLE, load_tokenizer
from workers.models import Job
from workers.training.bpe import readable

HTMX = {"HTTP_HX_REQUEST": "true"}


def valid_form(**changes) -> dict:
    return {
        "corpus": "shakespeare",
        "vocab_size": 2000,
        "min_frequency": 2,
        "special_tokens": "<|endoftext|>",
        **changes,
    }


def tokens_in(html: str, testid: str) -> list[str]:
    block = re.search(rf'data-testid="{testid}">(.*?)</p>', html, re.S).group(1)
    return re.findall(r'<span class="tok[^"]*">([^<]*)', block)


def test_the_lab_page_offers_the_corpora_and_the_settings(owner_client):
    html = owner_client.get("/jobs/tokenizer/").content.decode()
    for label in (
        "Shakespeare&#x27;s works",
        "The King James Bible",
        "This course&#x27;s lessons",
        "A text file of your own",
    ):
        assert label in html
    assert 'name="vocab_size"' in html and 'min="256"' in html and 'max="32000"' in html
    assert "up to 10.0\xa0MB" in html
    assert 'enctype="multipart/form-data"' in html and 'hx-encoding="multipart/form-data"' in html


def test_the_lesson_embeds_the_lab_and_invites_a_visitor_to_log_in(course, owner_client, client):
    html = owner_client.get("/learn/train-your-own-tokenizer/").content.decode()
    assert 'id="tokenizer-lab"' in html and 'data-testid="tokenizer-form"' in html
    assert re.search(r'<input type="radio" name="corpus" value="shakespeare"[^>]* checked>', html)
    visitor = client.get("/learn/train-your-own-tokenizer/").content.decode()
    assert 'id="tokenizer-lab"' in visitor and "tokenizer-form" not in visitor
    assert "to train one." in visitor


def test_a_submission_from_a_lesson_swaps_in_the_job_live(owner_client, owner):
    response = owner_client.post("/jobs/tokenizer/", valid_form(vocab_size=3000, min_frequency=3), **HTMX)
    assert response.status_code == 201
    job = Job.objects.get(owner=owner)
    assert job.params == {
        "corpus": "shakespeare",
        "vocab_size": 3000,
        "min_frequency": 3,
        "special_tokens": ["<|endoftext|>"],
    }
    html = response.content.decode()
    assert html.lstrip().startswith('<aside class="exercise tokenizer-lab" id="tokenizer-lab"')  # just the lab
    assert f'ws-connect="/ws/jobs/{job.code}/"' in html
    assert f'id="job-{job.code}"' in html and "Waiting in the queue: next to start." in html
    # The form again, with the same settings to vary.
    assert 'name="vocab_size" value="3000"' in html and 'name="min_frequency" value="3"' in html


def test_an_upload_is_stored_under_the_jobs_code_not_its_name(owner_client, owner):
    upload = SimpleUploadedFile("my notes.txt", TINY_TEXT.encode())
    response = owner_client.post("/jobs/tokenizer/", valid_form(corpus="upload", file=upload))
    assert response.status_code == 302
    job = Job.objects.get(owner=owner)
    assert job.params["upload_name"] == "my notes.txt" and job.params["upload_bytes"] == len(TINY_TEXT)
    assert files.upload_path(job.code).read_text() == TINY_TEXT


def test_a_finished_jobs_page_shows_what_it_learned(finished_job, owner_client):
    html = owner_client.get(finished_job.get_absolute_url()).content.decode()
    metrics = finished_job.metrics
    assert f'data-testid="vocab-size">{metrics["vocab_size"]:,}<' in html
    assert f'data-testid="chars-per-token">{metrics["chars_per_token"]:.2f}<' in html
    assert f'href="/jobs/{finished_job.code}/files/tokenizer.json"' in html
    first, second = metrics["merges"][:2]
    assert (
        f"<code>{readable(first[0])}</code> + <code>{readable(first[1])}</code> → <code>{readable(''.join(first))}</code>"
        in html
    )
    assert f"<code>{readable(''.join(second))}</code>" in html
    assert "Before any merge: every byte is a token of its own." in html
    assert "ws-connect" not in html and "data-poll" not in html  # nothing left to watch


def test_stepping_through_the_merges_retokenizes_the_sample(finished_job, owner_client):
    url = f"/jobs/{finished_job.code}/merges/"
    tokenizer = load_tokenizer(finished_job)
    before = owner_client.get(url, {"step": 0}, **HTMX).content.decode()
    assert before.lstrip().startswith('<section id="merges-')  # just the stepper
    assert len(tokens_in(before, "stepped-tokens")) == len(DEFAULT_SAMPLE.encode())

    counts = []
    for step in range(1, 6):
        html = owner_client.get(url, {"step": step}, **HTMX).content.decode()
        left, right = finished_job.metrics["merges"][step - 1]
        assert f'Merge {step}: <code class="tok">{readable(left)}</code>' in html
        counts.append(len(tokens_in(html, "stepped-tokens")))
        assert f"?step={step + 1}&amp;text=" in html  # the Next link
    assert counts == sorted(counts, reverse=True)  # a merge never adds tokens

    last = len(finished_job.metrics["merges"])
    html = owner_client.get(url, {"step": last}, **HTMX).content.decode()
    expected = [readable(token) for token in tokenizer.encode(DEFAULT_SAMPLE).tokens]
    assert tokens_in(html, "stepped-tokens") == expected  # every merge: the tokenizer's own split


def test_the_sample_sentence_is_the_learners_and_a_step_out_of_range_is_clamped(finished_job, owner_client):
    url = f"/jobs/{finished_job.code}/merges/"
    html = owner_client.get(url, {"step": 10_000, "text": "the cat"}, **HTMX).content.decode()
    assert f"Merge {len(finished_job.metrics['merges'])}:" in html
    assert tokens_in(html, "stepped-tokens") == [
        readable(t) for t in load_tokenizer(finished_job).encode("the cat").tokens
    ]
    assert 'data-testid="next-merge"' not in html
    html = owner_client.get(url, {"step": "seven", "text": "hi"}, **HTMX).content.decode()
    assert "Before any merge" in html


def test_without_htmx_a_stepper_link_renders_the_whole_page(finished_job, owner_client):
    html = owner_client.get(f"/jobs/{finished_job.code}/merges/", {"step": 3}).content.decode()
    assert "<html" in html and "Merge 3:" in html and 'data-testid="compare"' in html


def test_the_comparison_puts_three_tokenizers_side_by_side(finished_job, owner_client):
    text = "Wherefore art thou, smartphone?"
    html = owner_client.get(f"/jobs/{finished_job.code}/compare/", {"text": text}, **HTMX).content.decode()
    assert html.lstrip().startswith('<section id="compare-')
    learner = len(load_tokenizer(finished_job).encode(text).ids)
    course = len(course_tokenizer().encode(text).ids)
    assert re.findall(r'data-testid="compare-count">(\d+) token', html) == [str(learner), str(course), str(len(text))]
    assert "Your tokenizer" in html and "The course model&#x27;s tokenizer" in html and "Character by character" in html
    assert 'title="id 87"' in html  # "W", character level: its code point
    assert re.search(r'<span class="tok tok-\d" title="id \d+">', html)


def test_polling_gets_just_the_panel_and_stops_once_the_job_has_ended(finished_job, owner_client, make_job):
    queued = make_job()
    html = owner_client.get(queued.get_absolute_url(), **HTMX).content.decode()
    assert html.lstrip().startswith(f'<div id="job-{queued.code}"')
    assert 'hx-trigger="every 2s"' in html and "data-poll" in html

    html = owner_client.get(finished_job.get_absolute_url(), **HTMX).content.decode()
    assert 'id="merges-' in html and "hx-trigger" not in html.lstrip().split(">", 1)[0]


def test_a_learners_trained_tokenizers_are_theirs_alone(finished_job, owner, classmate, make_job):
    make_job()  # queued: not trained yet
    listed = trained_tokenizers_for(owner)
    assert [(code, path.name) for _, code, path in listed] == [(finished_job.code, "tokenizer.json")]
    label = listed[0][0]
    assert label.startswith("Your tokenizer: This course's lessons, vocabulary 400 (")
    assert trained_tokenizers_for(classmate) == []
    assert trained_tokenizers_for(AnonymousUser()) == []


@pytest.mark.parametrize("path", ["/jobs/", "/jobs/tokenizer/", "JOB", "JOB?step=2"])
def test_the_pages_carry_no_inline_script_or_style(path, owner_client, finished_job):
    html = owner_client.get(path.replace("JOB", finished_job.get_absolute_url())).content.decode()
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"<[^>]+\son[a-z]+=", html)  # no inline event handlers


@pytest.mark.parametrize(("asked", "checked"), [("bible", "bible"), ("upload", "upload"), ("nonsense", "shakespeare")])
def test_a_link_can_preselect_a_corpus_we_have(asked, checked, owner_client):
    html = owner_client.get("/jobs/tokenizer/", {"corpus": asked}).content.decode()
    assert re.findall(r'<input type="radio" name="corpus" value="(\w+)"[^>]* checked>', html) == [checked]
