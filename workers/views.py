"""Pages of the jobs: the tokenizer lab, one job (live), My jobs; cancel, delete, download.

Every view that takes a job's code goes through get_job_for_user: a job that is not yours is
a 404, exactly like a job that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lessons.views import learner_required
from workers.forms import LimitedUploadHandler, QuantizationForm, TokenizerJobForm, initial_corpus
from workers.jobs import QuotaExceeded, cancel_job, delete_job, files, get_job_for_user, submit_job
from workers.jobs.lora_lab import LabRefused, blank_lora_form, lora_preview_context, submitted_lora_form
from workers.jobs.panel import job_panel_context
from workers.jobs.quantization import request_comparison
from workers.jobs.tokenizer import comparison, merge_step
from workers.models import Job

# The multipart envelope around an upload (boundaries, the other fields) is small; a request
# longer than the limit plus this is refused before its body is read at all.
ENVELOPE_BYTES = 64 * 1024

CANCEL_NOTES = {
    "cancelled": "Cancelled: the job was removed from the queue.",
    "requested": "Stopping: the job ends at its next step and keeps nothing.",
    "finished": "This job had already finished.",
}


# --- The tokenizer lab -------------------------------------------------------------------------------


def upload_limited(view: Callable[[HttpRequest, LimitedUploadHandler], HttpResponse]) -> Callable:
    """For a view that takes an upload: the size check must see the upload before anything
    parses the body into files, and the CSRF middleware would parse it (for the token). So the
    view is exempt from the middleware, gets the size-limiting handler first, and checks CSRF
    itself after that (the pattern Django's docs give for upload handlers). The view receives
    the handler as its second argument."""
    protected = csrf_protect(view)

    @csrf_exempt
    @wraps(view)
    def limited(request: HttpRequest) -> HttpResponse:
        handler = LimitedUploadHandler(request, settings.JOB_UPLOAD_MAX_BYTES)
        request.upload_handlers.insert(0, handler)
        return protected(request, handler)

    return limited


@learner_required
@require_http_methods(["GET", "POST"])
@upload_limited
def tokenizer_lab(request: HttpRequest, handler: LimitedUploadHandler) -> HttpResponse:
    limit = settings.JOB_UPLOAD_MAX_BYTES
    template = "exercises/_tokenizer_lab.html" if request.htmx else "jobs/tokenizer_lab.html"
    if request.method == "GET":
        form = TokenizerJobForm(upload_limit=limit, initial={"corpus": initial_corpus(request.GET.get("corpus"))})
        return render(request, template, {"lab_form": form})

    if _content_length(request) > limit + ENVELOPE_BYTES:
        defaults = {name: field.initial for name, field in TokenizerJobForm.base_fields.items()}
        form = TokenizerJobForm({**defaults, "corpus": "upload"}, upload_limit=limit, upload_too_large=True)
        form.is_valid()
        return render(request, template, {"lab_form": form}, status=400)

    form = TokenizerJobForm(request.POST, request.FILES, upload_limit=limit, upload_too_large=handler.too_large)
    job = None
    if form.is_valid():
        try:
            job = submit_job(request.user, Job.Kind.TOKENIZER, form.params(), upload=form.cleaned_data["file"])
        except QuotaExceeded as exc:
            form.add_error(None, str(exc))
    if job is None:
        return render(request, template, {"lab_form": form}, status=400)
    if not request.htmx:
        return redirect(job)
    # In a lesson: the form again, with the same settings to vary, and the new job live below it.
    initial = {**job.params, "special_tokens": " ".join(job.params["special_tokens"])}
    fresh = TokenizerJobForm(upload_limit=limit, initial=initial)
    return render(request, template, {"lab_form": fresh, "lab_job": job}, status=201)


def _content_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


# --- The quantization lab ----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def quantization_lab(request: HttpRequest) -> HttpResponse:
    # Anyone may look (the lab shows an earlier run of the default prompt); only learners submit.
    if request.method == "POST":
        return _submit_quantization(request)
    template = "exercises/_quantization_lab.html" if request.htmx else "jobs/quantization_lab.html"
    return render(request, template)


@learner_required
def _submit_quantization(request: HttpRequest) -> HttpResponse:
    template = "exercises/_quantization_lab.html" if request.htmx else "jobs/quantization_lab.html"
    form = QuantizationForm(request.POST)
    job = None
    if form.is_valid():
        try:
            job, reused = request_comparison(request.user, form.cleaned_data["prompt"])
        except (QuotaExceeded, ValueError) as exc:
            form.add_error(None if isinstance(exc, QuotaExceeded) else "prompt", str(exc))
    if job is None:
        return render(request, template, {"lab_form": form}, status=400)
    if not request.htmx:
        return redirect(job)
    # In a lesson: the form again, with the same prompt to vary, and the job below it (live, or
    # already finished when it was reused).
    fresh = QuantizationForm(initial={"prompt": job.params["prompt"]})
    return render(request, template, {"lab_form": fresh, "lab_job": job}, status=200 if reused else 201)


# --- The LoRA lab --------------------------------------------------------------------------------------


@learner_required
@require_http_methods(["GET", "POST"])
@upload_limited
def lora_lab(request: HttpRequest, handler: LimitedUploadHandler) -> HttpResponse:
    template = "exercises/_lora_lab.html" if request.htmx else "jobs/lora_lab.html"
    if request.method == "GET":
        return render(request, template, {"lab_form": blank_lora_form(request.GET.get("dataset"))})
    try:
        form = submitted_lora_form(request, handler, too_large=_content_length(request) > _envelope_limit())
        job = submit_job(request.user, Job.Kind.LORA, form.params(), upload=form.cleaned_data.get("file"))
    except LabRefused as refused:
        return render(request, template, {"lab_form": refused.form}, status=400)
    except QuotaExceeded as exc:
        form.add_error(None, str(exc))
        return render(request, template, {"lab_form": form}, status=400)
    if not request.htmx:
        return redirect(job)
    # In a lesson: the form again, with the same settings to vary, and the new job live below it.
    return render(request, template, {"lab_form": blank_lora_form(job.params), "lab_job": job}, status=201)


@learner_required
@require_POST
@upload_limited
def lora_preview(request: HttpRequest, handler: LimitedUploadHandler) -> HttpResponse:
    """The job's resolved settings and its first training examples, before it is submitted."""
    try:
        form = submitted_lora_form(request, handler, too_large=_content_length(request) > _envelope_limit())
        context = lora_preview_context(form)
    except LabRefused as refused:
        if not request.htmx:
            return render(request, "jobs/lora_lab.html", {"lab_form": refused.form}, status=400)
        return render(request, "jobs/_lora_preview.html", {"preview_form": refused.form}, status=400)
    if not request.htmx:  # the Preview button without JavaScript: the lab's page, with the preview
        return render(request, "jobs/lora_lab.html", {"lab_form": form, **context})
    return render(request, "jobs/_lora_preview.html", context)


def _envelope_limit() -> int:
    return settings.JOB_UPLOAD_MAX_BYTES + ENVELOPE_BYTES


# --- One job -------------------------------------------------------------------------------------------


@require_GET
@learner_required
def job_detail(request: HttpRequest, code: UUID) -> HttpResponse:
    job = get_job_for_user(request.user, code)
    if request.htmx:
        # The panel polling for news while its websocket is down.
        return render(request, "jobs/_job.html", job_panel_context(job))
    context = job_panel_context(job, step=request.GET.get("step", 0), text=request.GET.get("text"))
    return render(request, "jobs/job.html", context)


@require_GET
@learner_required
def merge_steps(request: HttpRequest, code: UUID) -> HttpResponse:
    job = _finished_tokenizer(request, code)
    step, text = request.GET.get("step", 0), request.GET.get("text")
    if request.htmx:
        return render(request, "jobs/_merge_step.html", {"job": job, "stepper": merge_step(job, step, text)})
    return render(request, "jobs/job.html", job_panel_context(job, step=step, text=text))


@require_GET
@learner_required
def compare(request: HttpRequest, code: UUID) -> HttpResponse:
    job = _finished_tokenizer(request, code)
    text = request.GET.get("text")
    if request.htmx:
        return render(request, "jobs/_compare.html", {"job": job, "comparison": comparison(job, text)})
    return render(request, "jobs/job.html", job_panel_context(job, compare=text))


def _finished_tokenizer(request: HttpRequest, code: UUID) -> Job:
    job = get_job_for_user(request.user, code)
    if job.kind != Job.Kind.TOKENIZER or job.status != Job.Status.SUCCEEDED:
        raise Http404("This job has no tokenizer to show.")
    return job


@require_POST
@learner_required
def cancel(request: HttpRequest, code: UUID) -> HttpResponse:
    job = get_job_for_user(request.user, code)
    note = CANCEL_NOTES[cancel_job(job)]
    if request.htmx:
        if request.POST.get("from") == "list":
            return render(request, "jobs/_job_row.html", {"job": job, "note": note})
        return render(request, "jobs/_job.html", {**job_panel_context(job), "note": note})
    messages.info(request, note)
    return redirect("jobs:list" if request.POST.get("from") == "list" else job)


@require_POST
@learner_required
def delete(request: HttpRequest, code: UUID) -> HttpResponse:
    job = get_job_for_user(request.user, code)
    if not job.is_finished:
        error = "This job is still queued or running: cancel it first, then delete it."
        if request.htmx:
            return render(request, "jobs/_job_row.html", {"job": job, "error": error}, status=400)
        messages.error(request, error)
        return redirect("jobs:list")
    delete_job(job)
    if request.htmx:
        return HttpResponse("")  # the row's outerHTML: it disappears
    messages.success(request, "Deleted the job and its files.")
    return redirect("jobs:list")


@require_GET
def download(request: HttpRequest, code: UUID, name: str) -> FileResponse:
    # No login page for strangers either: to anyone but its owner the file does not exist.
    job = get_job_for_user(request.user, code)
    artifact = get_object_or_404(job.artifacts, name=name)
    path = files.artifact_path(job.code, artifact.name)  # the stored name, never the URL's text
    try:
        return FileResponse(path.open("rb"), as_attachment=True, filename=artifact.name)
    except FileNotFoundError:  # deleted meanwhile
        raise Http404("This file is gone.") from None


# --- My jobs -------------------------------------------------------------------------------------------


@require_GET
@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.for_owner(request.user).prefetch_related("artifacts")
    return render(request, "jobs/job_list.html", {"jobs": jobs})
