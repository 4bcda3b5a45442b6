-- The journal's tables as of devstack 0.x (issue 19: versioned from here on; later changes are new files).
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    pr TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,             -- pending | done | ignored | dead
    queue TEXT NOT NULL DEFAULT 'git',-- git: planned and pushed by the worker; comments: the command runner
    outcome TEXT NOT NULL DEFAULT '', -- what the planner did, or why it was ignored
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    finished_at REAL,
    claimed_by TEXT NOT NULL DEFAULT '',   -- the process applying it now (host:pid:random), '' when none
    claim_expires REAL NOT NULL DEFAULT 0  -- ... until then (a crashed claimer's rows are taken after it)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, queue, seq);
CREATE INDEX IF NOT EXISTS deliveries_pr ON deliveries (pr, seq);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS outbox (
    pr TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    payload TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,             -- pending | sent | recorded | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    sent_body TEXT NOT NULL DEFAULT '',
    state_seq INTEGER NOT NULL DEFAULT 0, -- the newest delivery (seq) the state reflects: never goes back
    phase TEXT NOT NULL DEFAULT 'comment' -- what is still to send: the comment, then the deployment
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS approvals (
    pr TEXT PRIMARY KEY,              -- a fork PR a writer approved with /devstack approve
    sha TEXT NOT NULL,                -- ... for exactly this head sha
    approver TEXT NOT NULL,
    approved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS warnings (
    feature TEXT PRIMARY KEY,         -- the reaper warned this stack's PRs ...
    expires_at TEXT NOT NULL          -- ... about this expiry
);
CREATE TABLE IF NOT EXISTS activity (
    key TEXT PRIMARY KEY,             -- a feature, or feature/service (devstack.sleep.activity_key) ...
    at REAL NOT NULL                  -- ... and its latest activity: a PR event, a command, a request
);
CREATE TABLE IF NOT EXISTS sticky (
    pr TEXT PRIMARY KEY,
    comment_id INTEGER,
    deployed_sha TEXT NOT NULL DEFAULT '',
    environment TEXT NOT NULL DEFAULT '',
    deployment_id INTEGER             -- the latest deployment made for the PR (closing touches only it)
);
CREATE TABLE IF NOT EXISTS checks (
    repo TEXT NOT NULL,               -- provider:owner/name
    sha TEXT NOT NULL,
    name TEXT NOT NULL,               -- a check run, suite (app slug), status context, pipeline or job
    state TEXT NOT NULL,              -- pending | success | failure (the latest report wins)
    url TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    PRIMARY KEY (repo, sha, name)
);
CREATE TABLE IF NOT EXISTS gate_heads (
    pr TEXT PRIMARY KEY,              -- an open PR of a repository with a gated service ...
    repo TEXT NOT NULL,               -- provider:owner/name
    sha TEXT NOT NULL,                -- ... its head sha, as the worker last planned it
    seen_at REAL NOT NULL,            -- when that sha was first seen (the deadline counts from here)
    state TEXT NOT NULL DEFAULT 'waiting', -- waiting | open | failed, as last planned
    images TEXT NOT NULL DEFAULT '[]',     -- image references the gate waits for (JSON list)
    probes INTEGER NOT NULL DEFAULT 0,     -- registry checks made for them
    next_probe_at REAL NOT NULL DEFAULT 0,
    reported INTEGER NOT NULL DEFAULT 0    -- the deadline passed and was reported
);
CREATE INDEX IF NOT EXISTS gate_heads_sha ON gate_heads (repo, sha);
CREATE TABLE IF NOT EXISTS images (
    ref TEXT PRIMARY KEY,             -- repository:tag found in its registry
    found_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gate_bypass (
    pr TEXT PRIMARY KEY,              -- /devstack deploy: this PR's gate is open ...
    sha TEXT NOT NULL,                -- ... for exactly this sha
    actor TEXT NOT NULL,
    at REAL NOT NULL
);
