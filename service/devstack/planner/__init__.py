"""The planner: **pure** — (events, current entries, catalog, now) -> new entries + feedback to send.

No I/O, no clock, no git, no HTTP: everything it needs comes in as arguments, so a rejected push is
handled by planning again on the new tree, and a replayed event reaches the same state.

The planner is state based. Each :class:`PullRequestEvent` carries the PR's whole state; applying
it means: take back everything this PR asked for, then ask again for what its state wants now. So
opened / synchronize / labeled / edited / ready_for_review are one code path, and close, merge and
converting to draft are the same path wanting nothing.

A **stack** is one entry file: every service of one feature. A PR asks for

* its own services (the catalog services built from its repository), at its head sha;
* the services of its ``devstack/with:<service>`` labels and their ``depends_on`` closure, at the
  head of an open PR of that service's repository in the same feature when there is one, else at
  the service's ``base_tag``.

``requestedBy`` records who asks for each element: a service goes when nobody asks for it any more,
and a PR-built service whose PR closes falls back to its base tag while others still ask for it.

The stack shares one expiry. Activity of any of its PRs moves it forward (``received_at`` + the PR's
TTL, never backwards), an explicit ``devstack/ttl:<duration>`` label sets it, resync never moves it.
:class:`~devstack.events.Command` events carry what the CLI, comment commands and the reaper ask for.

A **gate** (docs/gates.md) holds a PR's own service back while CI has not built its head sha: the
caller passes the :class:`~devstack.gates.GateStatus` of each (PR, sha); a service whose gate is not
open keeps the element of the sha it had (the previous sha keeps serving) or gets none yet.
"""

from devstack.planner.core import feature_of, feature_text, plan, why_no_preview
from devstack.planner.elements import base_element, build_element, host, pr_tag, stack_expiry
from devstack.planner.feedback import stack_feedback
from devstack.planner.model import (
    CLI_REQUESTER,
    NEVER,
    Decision,
    Feedback,
    GateNote,
    KeyIndex,
    Plan,
    PlannerEvent,
    ServiceLink,
    dependency_closure,
    format_time,
    label,
    source_key,
)

__all__ = [
    "CLI_REQUESTER", "NEVER", "Decision", "Feedback", "GateNote", "KeyIndex", "Plan", "PlannerEvent", "ServiceLink",
    "base_element", "build_element", "dependency_closure", "feature_of", "feature_text", "format_time", "host",
    "label", "plan", "pr_tag", "source_key", "stack_expiry", "stack_feedback", "why_no_preview",
]
