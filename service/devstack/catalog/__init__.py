"""Configuration: ``devstack.yaml`` plus ``DEVSTACK_*`` environment overrides, and the service catalog.

Every key of the file can be overridden by an environment variable: ``DEVSTACK_`` + the key path in
upper case joined by ``__``: ``DEVSTACK_GITOPS__URL``, ``DEVSTACK_PROVIDERS__GITHUB__TOKEN``,
``DEVSTACK_TTL__DEFAULT=12h``. Lists and maps take JSON: ``DEVSTACK_SECURITY__REPOS='["acme/*"]'``.

An invalid configuration raises :class:`~devstack.errors.ConfigError` naming the key and the problem.
``sections.py`` holds one model per section of the file, ``settings.py`` the whole and its loading.
"""

from devstack.catalog.sections import ServiceSettings, public_url
from devstack.catalog.settings import (
    SAMPLE_CATALOG,
    Settings,
    format_validation_error,
    load_settings,
    service_problems,
)

__all__ = ["SAMPLE_CATALOG", "ServiceSettings", "Settings", "format_validation_error", "load_settings",
           "public_url", "service_problems"]
