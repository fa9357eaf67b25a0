-- Leased claims: due times, lease owner and expiry on messages; the durable feedback queue;
-- named singleton leases. Times are Unix seconds of the host clock (the one machine with the file).

ALTER TABLE messages ADD COLUMN due_at REAL NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN first_attempt_at REAL NULL;
ALTER TABLE messages ADD COLUMN lease_owner TEXT NULL;
ALTER TABLE messages ADD COLUMN lease_expires REAL NULL;

UPDATE messages SET due_at = received_at;

-- The unleased relay sent one message per thread at a time, but a database may still hold two
-- rows of one thread left 'sending': keep the first in order in flight, the others wait again.
UPDATE messages SET state = 'pending'
WHERE state = 'sending' AND id NOT IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY team, channel, thread_ts ORDER BY order_key, id
        ) AS n
        FROM messages WHERE state = 'sending'
    ) WHERE n = 1
);

-- At most one message per thread in flight, whatever the callers do.
CREATE UNIQUE INDEX messages_one_sending_per_thread
    ON messages (team, channel, thread_ts) WHERE state = 'sending';

-- claim_due, next_due_in and oldest_due_age: due pending rows, expired sending rows.
CREATE INDEX messages_state_due ON messages (state, due_at);

CREATE TABLE feedback (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    team          TEXT    NOT NULL DEFAULT '',
    channel       TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    payload       TEXT    NOT NULL,  -- JSON object
    dedupe_key    TEXT    NULL UNIQUE,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        REAL    NOT NULL,
    lease_owner   TEXT    NULL,
    lease_expires REAL    NULL,
    created_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    last_error    TEXT    NULL
);

-- At most one Slack call per channel in flight: a channel's calls are made in order.
CREATE UNIQUE INDEX feedback_one_sending_per_channel
    ON feedback (team, channel) WHERE state = 'sending';

-- claim_feedback: a channel's oldest open item; feedback_depth: open items.
CREATE INDEX feedback_channel_state ON feedback (team, channel, state, id);
CREATE INDEX feedback_state_due ON feedback (state, due_at);

CREATE TABLE leases (
    name       TEXT NOT NULL PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at REAL NOT NULL
);
