"""Provisioning hooks of the feature-release chart: ``devstack hook <name> <action>``.

The logic of every hook lives here, in the devstack image; the chart only renders Jobs that run
``devstack hook secrets|postgres|sqs|sns ensure`` (PreSync, on every sync) and ``... cleanup``
(PostDelete). Each action is idempotent and is configured by environment variables only (see
``docs/hooks.md``):

* :mod:`.secret_copy`: copy named Secrets from a base namespace into the preview namespace;
* :mod:`.postgres`: a database and a role per preview on a shared server, the credentials in a Secret;
* :mod:`.queues`: SQS queues and SNS topics named ``<feature>-<name>``, their URLs/ARNs in a ConfigMap;
* :mod:`.rbac`: the (pure) Role rules the chart renders for the hook ServiceAccount.

Redis needs no hook: it is a Deployment inside the preview namespace and goes with it.
"""
