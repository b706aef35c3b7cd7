"""Integrations with web frameworks, each in that framework's own idioms.

``deploysync.contrib.django`` (an app for ``INSTALLED_APPS``), ``deploysync.contrib.flask``
(a Flask extension) and ``deploysync.contrib.starlette`` (Starlette and FastAPI). They
import the framework-agnostic core; the core never imports them.
"""
