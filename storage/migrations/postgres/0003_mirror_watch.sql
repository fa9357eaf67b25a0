-- Mirroring the agent's side into the thread: one watch per bound thread (issue 12), the same table
-- as SQLite's migration 3. A watch belongs to its binding (removed with it). Times are Unix seconds,
-- compared with relay_now().

CREATE TABLE mirror_watch (
    team            text             NOT NULL,
    channel         text             NOT NULL,
    thread_ts       text             NOT NULL,
    provider        text             NOT NULL,
    session_id      text             NOT NULL,
    mode            text             NULL CHECK (mode IN ('on', 'off', 'final')),  -- NULL: the default
    watermark       text             NULL,  -- how far the session was read (JSON); NULL: never read
    state           text             NULL,  -- the last normalised state seen
    status_ts       text             NULL,  -- the message updated in place with the state
    status_text     text             NULL,  -- what it was last set to
    last_agent_text text             NULL,
    idle_polls      integer          NOT NULL DEFAULT 0,
    failures        integer          NOT NULL DEFAULT 0,
    next_poll_at    double precision NULL,  -- NULL: not polled until something wakes it
    updated_at      double precision NOT NULL,
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
SELECT team, channel, thread_ts, provider, session_id, anchor_ts, relay_now(), relay_now()
FROM bindings;
