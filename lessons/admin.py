from django.contrib import admin

from lessons.models import Choice, Lesson, LessonProgress, Module, Question, QuizAnswer

# Lessons come from the Markdown files: the admin shows them and their learners' progress, and
# edits only what the files do not own (nothing, today), so a sync never fights an admin edit.


class ReadOnlyContentAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class LessonInline(admin.TabularInline):
    model = Lesson
    fields = ["order", "title", "slug", "key", "minutes", "is_active"]
    extra = 0
    show_change_link = True


@admin.register(Module)
class ModuleAdmin(ReadOnlyContentAdmin):
    list_display = ["order", "title", "key", "is_active"]
    inlines = [LessonInline]


class QuestionInline(admin.TabularInline):
    model = Question
    fields = ["order", "key", "text", "is_active"]
    extra = 0


@admin.register(Lesson)
class LessonAdmin(ReadOnlyContentAdmin):
    list_display = ["order", "title", "module", "key", "minutes", "is_active", "learners_done"]
    list_filter = ["module", "is_active"]
    search_fields = ["title", "key", "slug"]
    inlines = [QuestionInline]
    exclude = ["segments"]

    @admin.display(description="learners done")
    def learners_done(self, lesson: Lesson) -> int:
        return lesson.progress.filter(completed_at__isnull=False).count()


@admin.register(Question)
class QuestionAdmin(ReadOnlyContentAdmin):
    list_display = ["key", "lesson", "text", "is_active"]
    list_filter = ["lesson__module"]


@admin.register(Choice)
class ChoiceAdmin(ReadOnlyContentAdmin):
    list_display = ["key", "question", "is_correct", "is_active"]


@admin.register(LessonProgress)
class LessonProgressAdmin(admin.ModelAdmin):
    list_display = ["user", "lesson", "last_visited_at", "completed_at"]
    list_filter = ["lesson__module", "completed_at"]
    search_fields = ["user__username", "lesson__title"]
    autocomplete_fields = ["user"]
    raw_id_fields = ["lesson"]


@admin.register(QuizAnswer)
class QuizAnswerAdmin(admin.ModelAdmin):
    list_display = ["user", "question", "choice", "attempts", "answered_at"]
    search_fields = ["user__username", "question__key"]
    raw_id_fields = ["user", "question", "choice"]
