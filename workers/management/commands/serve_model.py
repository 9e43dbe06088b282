from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Serve the course model to every learner: continuous batching over the channel layer."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--device", default=settings.MODEL_DEVICE or None, help="cpu, cuda, cuda:1 (default: best)")

    def handle(self, *args, device: str | None, **options) -> None:
        # torch and transformers load here, in this process only: web processes never import them.
        from channels.layers import get_channel_layer

        from workers.inference.engine import Engine
        from workers.inference.loading import load_model, model_threads
        from workers.inference.model_files import is_prepared
        from workers.inference.server import ModelServer

        logging.getLogger("workers").setLevel(logging.INFO)
        import torch

        torch.set_num_threads(model_threads(settings.MODEL_THREADS))
        if not is_prepared(settings.MODEL_PATH):
            raise CommandError(f"no model in {settings.MODEL_PATH}: run `python manage.py prepare_model` first")
        model, tokenizer = load_model(settings.MODEL_PATH, device, settings.MODEL_DTYPE)
        engine = Engine(
            model,
            tokenizer,
            max_rows=settings.MODEL_MAX_ROWS,
            max_context=min(settings.MODEL_MAX_CONTEXT, model.config.max_position_embeddings),
            prefill_chunk=settings.MODEL_PREFILL_CHUNK,
            max_queue=settings.MODEL_MAX_QUEUE,
        )
        server = ModelServer(
            engine,
            get_channel_layer(),
            settings.REDIS_URL,
            chat_template=_chat_template(settings.MODEL_PATH),
            model_name=settings.MODEL_PATH.name,
            max_adapters=settings.MODEL_MAX_ADAPTERS,
        )
        dtype = str(engine.runner.dtype).removeprefix("torch.")
        self.stdout.write(
            f"Serving {settings.MODEL_PATH.name} on {engine.runner.device} in {dtype} (up to {engine.max_rows} rows)"
        )

        async def main() -> None:
            task = asyncio.create_task(server.run())
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C or SIGTERM: a clean stop
                await task

        asyncio.run(main())
        self.stdout.write("Model server stopped")


def _chat_template(folder):
    """prompt -> the instruct model's chat format, or None when the folder has no template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        return None

    def apply(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    return apply
