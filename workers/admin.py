from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from workers.jobs import cancel_job
from workers.models import Artifact, Job


class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    can_delete = False
    fields = readonly_fields = ("name", "size", "created_at")

    def has_add_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Every learner's jobs for staff: who, what, where it stands, how long. Staff can cancel
    any job; nothing else about a job is edited by hand (the workers own its state).
    """

    list_display = ("short_code", "kind", "owner", "status", "stage", "created_at", "duration_display", "worker")
    list_filter = ("status", "kind", "queue")
    search_fields = ("owner__username", "code")
    list_select_related = ("owner",)
    date_hierarchy = "created_at"
    actions = ["cancel_jobs"]
    inlines = [ArtifactInline]
    readonly_fields = [field.name for field in Job._meta.fields]

    @admin.display(description="job")
    def short_code(self, job: Job) -> str:
        return str(job.code)[:8]

    @admin.display(description="duration")
    def duration_display(self, job: Job) -> str:
        if job.duration is None:
            return "–"
        seconds = int(job.duration.total_seconds())
        return f"{seconds // 60}:{seconds % 60:02d}"

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        outcomes = [cancel_job(job) for job in queryset]
        self.message_user(
            request,
            f"{outcomes.count('cancelled')} removed from the queue, {outcomes.count('requested')} asked to stop, "
            f"{outcomes.count('finished')} had already finished.",
            messages.SUCCESS,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # a learner deletes their own finished jobs, files included, on My jobs
