-- Mirroring the agent's side into the thread: one watch per bound thread (issue 12). A watch belongs
-- to its binding (removed with it). Times are Unix seconds of the host clock.

CREATE TABLE mirror_watch (
    team            TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    thread_ts       TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    session_id      TEXT    NOT NULL,
    mode            TEXT    NULL CHECK (mode IN ('on', 'off', 'final')),  -- NULL: the default
    watermark       TEXT    NULL,  -- how far the session was read (JSON); NULL: never read
    state           TEXT    NULL,  -- the last normalised state seen
    status_ts       TEXT    NULL,  -- the message updated in place with the state
    status_text     TEXT    NULL,  -- what it was last set to
    last_agent_text TEXT    NULL,
    idle_polls      INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    next_poll_at    REAL    NULL,  -- NULL: not polled until something wakes it
    updated_at      REAL    NOT NULL,
    PRIMARY KEY (team, channel, thread_ts),
    FOREIGN KEY (team, channel, thread_ts) REFERENCES bindings (team, channel, thread_ts)
        ON DELETE CASCADE
);

-- due_watches: watches due now, the longest due first.
CREATE INDEX mirror_watch_due ON mirror_watch (next_poll_at) WHERE next_poll_at IS NOT NULL;

-- session_watches: every thread bound to one session.
CREATE INDEX mirror_watch_session ON mirror_watch (provider, session_id);

-- Threads linked before this version are watched from now on (the first read shows nothing).
INSERT INTO mirror_watch (team, channel, thread_ts, provider, session_id, status_ts, next_poll_at, updated_at)
SELECT team, channel, thread_ts, provider, session_id, anchor_ts,
       (julianday('now') - 2440587.5) * 86400.0, (julianday('now') - 2440587.5) * 86400.0
FROM bindings;
