"""deploysync for Django: add ``"deploysync.contrib.django"`` to ``INSTALLED_APPS``.

Then put ``"deploysync.contrib.django.middleware.DeploySyncMiddleware"`` high in
``MIDDLEWARE`` (directly after ``SecurityMiddleware``), configure the ``DEPLOYSYNC``
settings dict (at least ``"STORE"``) and, to have ``collectstatic`` build deployments,
``STORAGES["staticfiles"]["BACKEND"] = "deploysync.contrib.django.storage.DeploySyncStorage"``.
See :mod:`deploysync.contrib.django.conf` for the settings and
:mod:`deploysync.contrib.django.checks` for the system checks.
"""
