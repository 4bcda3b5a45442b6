"""devstack: a preview environment per pull request, through GitOps and Argo CD."""

__version__ = "0.1.0"
