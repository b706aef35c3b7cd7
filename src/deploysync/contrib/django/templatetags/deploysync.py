# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""Template tags: ``{% load deploysync %}``.

``{% deploysync_head %}``
    The deployment tags (``<meta name="deployment-id">`` and the client script) for
    manual placement in ``<head>`` when ``DEPLOYSYNC["INJECT"]`` is ``False``, or to
    control where they go. The middleware sees them and does not inject a second copy.
    The script carries the request's CSP nonce (``DEPLOYSYNC["NONCE"]``).
``{% vite_tags "src/main.ts" %}``
    The entry's module script, its CSS and ``modulepreload`` links, from the Vite
    manifest of the current deployment (see :mod:`deploysync.vite`).
``{% deploysync_id %}``
    The current deployment id (for a data attribute, a log line, an error report).
"""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString, mark_safe

from ....vite import vite_tags as render_vite_tags
from ..conf import get_config, get_runtime, request_nonce, script_prefix

register = template.Library()


@register.simple_tag(takes_context=True)
def deploysync_head(context: template.Context) -> SafeString:
    request = context.get("request")
    config = get_config()
    html = get_runtime().head_tags(script_prefix(), request_nonce(request, config))
    return mark_safe(html)


@register.simple_tag(takes_context=True)
def vite_tags(context: template.Context, entry: str) -> SafeString:
    request = context.get("request")
    config = get_config()
    deployment = get_runtime().deployment
    if deployment is None:
        if config.strict:
            raise template.TemplateSyntaxError(
                f"vite_tags({entry!r}): the deploysync store has no current deployment"
            )
        return mark_safe("")
    html = render_vite_tags(
        entry,
        deployment,
        nonce=request_nonce(request, config),
        strict=config.strict,
        prefix=script_prefix(),
    )
    return mark_safe(html)


@register.simple_tag
def deploysync_id() -> str:
    deployment = get_runtime().deployment
    return deployment.id if deployment is not None else ""
