"""Django-free ML code for the training jobs: dataclasses and paths in, results out.

The Celery tasks in workers.tasks are thin shells around these functions; nothing here touches
the ORM, the channel layer or settings, so it can be tested and benchmarked on its own.
"""
