"""Settings of the Django + Turbo Drive example (deploysync parts marked)."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    # deploysync: before staticfiles, so `runserver` leaves /static/ to the middleware.
    "deploysync.contrib.django",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # deploysync: high up, like whitenoise. Serves the assets, answers stale
    # navigations with 409 before any view runs, injects the tags into HTML.
    "deploysync.contrib.django.middleware.DeploySyncMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "turbo_site.urls"
WSGI_APPLICATION = "turbo_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csrf",
            ]
        },
    }
]

STATIC_URL = "/static/"
STATICFILES_DIRS = [os.environ.get("EXAMPLE_STATIC", str(BASE_DIR / "static"))]
STATIC_ROOT = os.environ.get("EXAMPLE_STATIC_ROOT", str(BASE_DIR / ".staticroot"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # deploysync: collectstatic builds and activates a deployment; {% static %} gives
    # the current deployment's hashed URLs.
    "staticfiles": {"BACKEND": "deploysync.contrib.django.storage.DeploySyncStorage"},
}

DEPLOYSYNC = {
    "STORE": os.environ.get("DEPLOYSYNC_STORE", str(BASE_DIR / ".deploysync")),
    # Turbo Drive navigates; deploysync watches and makes the next visit after a deploy
    # a full page load.
    "ROUTING": "external",
}
