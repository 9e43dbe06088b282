from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from lessons.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user and print it (it is shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line")
        parser.add_argument("--create-user", action="store_true", help="create the user if there is none")

    def handle(self, *args, username: str, name: str, create_user: bool, **options) -> None:
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None and create_user:
            user = users.create_user(username)
        if user is None:
            raise CommandError(f"no user named {username!r} (add --create-user to make one)")
        _, key = ApiToken.issue(user, name)
        self.stdout.write(key)
