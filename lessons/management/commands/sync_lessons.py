from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lessons.loader import ContentErrors, load_course
from lessons.sync import sync_course


class Command(BaseCommand):
    help = "Read the course's Markdown files, check them, and store them in the database."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--path", type=Path, default=None, help="lessons folder (default: LESSONS_DIR)")
        parser.add_argument("--check", action="store_true", help="only check the files; write nothing")

    def handle(self, *args, path: Path | None, check: bool, **options) -> None:
        root = path or settings.LESSONS_DIR
        try:
            modules = load_course(root)
        except ContentErrors as exc:
            # One line per problem, each naming the file; the database is left as it was.
            raise CommandError(f"{len(exc.errors)} problem(s) in the lessons, nothing changed:\n{exc}") from None
        lessons = sum(len(module.lessons) for module in modules)
        if check:
            self.stdout.write(f"ok: {len(modules)} modules, {lessons} lessons")
            return
        report = sync_course(modules)
        details = ", ".join(f"{label} {count}" for label, count in sorted(report.items()) if count)
        self.stdout.write(self.style.SUCCESS(f"Synced {len(modules)} modules, {lessons} lessons ({details})"))
