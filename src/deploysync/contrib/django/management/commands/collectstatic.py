# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""``collectstatic`` whose deploysync lines go where the command's own go.

The storage builds the deployment inside collectstatic's post-processing, which is given
neither the command's ``stdout``/``stderr`` (``call_command(stdout=...)``) nor its
verbosity. With ``deploysync.contrib.django`` listed before ``django.contrib.staticfiles``
this command wins: it lends the storage its streams while it runs, so the deployment id
follows ``-v`` as the command's lines do (none at ``-v 0``) and warnings reach its
``stderr``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.staticfiles.management.commands.collectstatic import (
    Command as CollectstaticCommand,
)

from ...storage import command_output


class Command(CollectstaticCommand):
    def handle(self, *args: Any, **options: Any) -> Any:
        with command_output(self.stdout, self.stderr, int(options.get("verbosity", 1))):
            return super().handle(*args, **options)
