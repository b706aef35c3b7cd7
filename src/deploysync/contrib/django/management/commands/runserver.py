# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""``runserver`` that leaves ``/static/`` to the deploysync middleware.

``django.contrib.staticfiles`` replaces ``runserver`` with one that answers ``/static/``
from the finders, before any middleware: the hashed URLs of a deployment would 404. With
``deploysync.contrib.django`` listed before ``django.contrib.staticfiles`` this command
wins and turns ``--nostatic`` on by default (whitenoise's ``runserver_nostatic`` does the
same). ``--static`` hands the files back to staticfiles, and ``{% static %}`` gives their
plain names, served as they are edited (no collectstatic between edits).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings

from ...storage import use_plain_names

try:
    from django.contrib.staticfiles.management.commands.runserver import (
        Command as RunserverCommand,
    )
except ImportError:  # pragma: no cover - staticfiles not installed
    from django.core.management.commands.runserver import (
        Command as RunserverCommand,
    )


class Command(RunserverCommand):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        if parser.get_default("use_static_handler") is True:
            parser.add_argument(
                "--static",
                action="store_true",
                dest="use_static_handler",
                help="Serve /static/ from the staticfiles finders instead of deploysync.",
            )
            parser.set_defaults(use_static_handler=False)

    def handle(self, *args: Any, **options: Any) -> Any:
        # The autoreloader's child runs this too (with the same arguments). staticfiles
        # serves the finders' files only under DEBUG or --insecure: else the middleware
        # still does, hashed names included.
        serving = settings.DEBUG or options.get("insecure_serving")
        if options.get("use_static_handler") and serving:
            use_plain_names()
        return super().handle(*args, **options)
