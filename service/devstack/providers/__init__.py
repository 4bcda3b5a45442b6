"""Provider adapters (GitHub, GitLab).

Providers only translate: verify a webhook, turn its payload into the shared
:mod:`devstack.events` models, and make the API calls that send feedback. No planning here.
"""
