"""``devstack hook <name> <action>``: the entry point the chart's hook Jobs run.

Exit codes: 0 done (or nothing to do); 1 a permanent failure (bad configuration, a missing source
secret, a refused request): retrying the Job cannot help; 75 (``EX_TEMPFAIL``) a failure that may
pass (a server not reachable), after the hook's own bounded retries: the Job's ``backoffLimit`` may
run it again.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from devstack.errors import PermanentError, TemporaryError
from devstack.hooks import postgres, queues, secret_copy, settings
from devstack.hooks.kube import KubeStore, ObjectStore, load_api_client
from devstack.hooks.settings import Env, HookContext

logger = logging.getLogger(__name__)

HOOKS = ("secrets", "postgres", "sqs", "sns")
ACTIONS = ("ensure", "cleanup")
EXIT_OK = 0
EXIT_PERMANENT = 1
EXIT_TEMPORARY = 75

ApiClientFactory = Callable[[Env], Any]


def default_api_client(env: Env) -> Any:
    return load_api_client(kubeconfig=env.get("KUBECONFIG"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``devstack hook``; configuration comes from the environment (docs/hooks.md)."""
    parser.add_argument("hook", choices=HOOKS, help="which hook: " + ", ".join(HOOKS))
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="ensure: create or update (PreSync, every sync); cleanup: delete (PostDelete)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``args.hook`` ``args.action`` with the process environment; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_hook(args.hook, args.action, env=os.environ)


def run_hook(
    hook: str,
    action: str,
    *,
    env: Mapping[str, str],
    api_client_factory: ApiClientFactory = default_api_client,
) -> int:
    """Run one hook action; an expected failure becomes one log line and an exit code (a traceback
    only for a bug)."""
    try:
        _dispatch(hook, action, Env(env), api_client_factory)
    except PermanentError as exc:
        logger.error("hook %s %s failed: %s", hook, action, exc)
        return EXIT_PERMANENT
    except TemporaryError as exc:
        logger.error("hook %s %s failed, may pass on a later run: %s", hook, action, exc)
        return EXIT_TEMPORARY
    except Exception:
        logger.exception("hook %s %s failed unexpectedly", hook, action)
        return EXIT_PERMANENT
    logger.info("hook %s %s: done", hook, action)
    return EXIT_OK


def _dispatch(hook: str, action: str, env: Env, api_client_factory: ApiClientFactory) -> None:
    if hook not in HOOKS or action not in ACTIONS:
        raise PermanentError(f"unknown hook {hook!r} or action {action!r}")
    context = HookContext.from_env(env)
    logger.info(
        "hook %s %s: feature %s%s, namespace %s", hook, action, context.feature,
        f", service {context.service}" if context.service else "", context.namespace,
    )
    if hook == "secrets":
        _secrets(action, env, context, api_client_factory)
    elif hook == "postgres":
        _postgres(action, env, context, api_client_factory)
    elif hook in ("sqs", "sns"):
        _queues("sqs" if hook == "sqs" else "sns", action, env, context, api_client_factory)


def _secrets(action: str, env: Env, context: HookContext, api_client_factory: ApiClientFactory) -> None:
    if action == "cleanup":
        logger.info("secrets cleanup: nothing to do, the copies go with namespace %s", context.namespace)
        return
    config = settings.SecretsSettings.from_env(env)
    from kubernetes import client

    core = client.CoreV1Api(api_client_factory(env))
    context.retry.run(
        lambda: secret_copy.copy_secrets(
            core, feature=context.feature, source_namespace=config.source_namespace,
            namespace=context.namespace, secrets=config.secrets,
        ),
        what="copy secrets",
    )


def _postgres(action: str, env: Env, context: HookContext, api_client_factory: ApiClientFactory) -> None:
    admin = settings.PostgresAdmin.from_env(env)
    if action == "cleanup":
        postgres.cleanup(admin=admin, feature=context.feature, service=context.service, retry=context.retry)
        return
    store: ObjectStore = KubeStore(api_client_factory(env))
    postgres.ensure(
        admin=admin, store=store, feature=context.feature, namespace=context.namespace,
        service=context.service, secret_name=context.output_name(env, "postgres"), retry=context.retry,
    )


def _queues(
    kind: queues.Kind, action: str, env: Env, context: HookContext, api_client_factory: ApiClientFactory
) -> None:
    key = settings.SQS_QUEUES if kind == "sqs" else settings.SNS_TOPICS
    aws = settings.AwsSettings.from_env(env)
    client = queues.make_client(kind, aws)
    if action == "cleanup":
        queues.cleanup(
            kind, client, feature=context.feature, service=context.service,
            resources=env.names(key, required=False), retry=context.retry,
        )
        return
    store: ObjectStore = KubeStore(api_client_factory(env))
    queues.ensure(
        kind, client, store=store, feature=context.feature, namespace=context.namespace,
        resources=env.names(key), service=context.service, output_name=context.output_name(env, kind),
        retry=context.retry,
    )
