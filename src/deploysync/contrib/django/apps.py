# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""The Django app: registers the system checks and the settings-change hooks."""

from __future__ import annotations

from django.apps import AppConfig


class DeploySyncConfig(AppConfig):
    name = "deploysync.contrib.django"
    label = "deploysync"
    verbose_name = "deploysync"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from . import checks  # noqa: F401  (registers the checks)
        from .conf import reset_on_setting_changed

        setting_changed.connect(reset_on_setting_changed, dispatch_uid="deploysync-settings")
