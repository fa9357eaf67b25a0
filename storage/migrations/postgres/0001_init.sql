-- The full schema of the PostgreSQL store: the same tables and shapes as SQLite's migrations 1 and
-- 2 (times are Unix seconds as double precision), compared with the database clock relay_now().

CREATE FUNCTION relay_now() RETURNS double precision
    LANGUAGE sql VOLATILE
    AS $$ SELECT extract(epoch FROM clock_timestamp())::double precision $$;

CREATE TABLE bindings (
    team        text             NOT NULL,
    channel     text             NOT NULL,
    thread_ts   text             NOT NULL,
    provider    text             NOT NULL,
    session_id  text             NOT NULL,
    linked_by   text             NOT NULL,
    linked_at   double precision NOT NULL,
    muted       boolean          NOT NULL DEFAULT false,
    anchor_ts   text             NULL,
    PRIMARY KEY (team, channel, thread_ts)
);

CREATE TABLE messages (
    id               bigserial        PRIMARY KEY,
    team             text             NOT NULL,
    channel          text             NOT NULL,
    thread_ts        text             NOT NULL,
    ts               text             NOT NULL,
    revision         text             NOT NULL DEFAULT '',
    order_ts         text             NOT NULL,
    -- order_ts as integer microseconds: exact ordering of Slack ts strings ("1700000000.000100").
    order_key        bigint           NOT NULL,
    "user"           text             NOT NULL,
    text             text             NOT NULL,
    files            text             NOT NULL DEFAULT '[]',  -- JSON list of {"name", "permalink"}
    provider         text             NOT NULL,
    session_id       text             NOT NULL,
    state            text             NOT NULL
        CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'skipped')),
    attempts         integer          NOT NULL DEFAULT 0,
    outcome          text             NULL,
    detail           text             NULL,
    received_at      double precision NOT NULL,
    updated_at       double precision NOT NULL,
    due_at           double precision NOT NULL,
    first_attempt_at double precision NULL,
    lease_owner      text             NULL,
    lease_expires    double precision NULL,
    UNIQUE (team, channel, ts, revision)
);

-- A thread's open rows in order (the head of each thread, and the rows behind it).
CREATE INDEX messages_thread_state_order
    ON messages (team, channel, thread_ts, state, order_key, id);

-- count_messages.
CREATE INDEX messages_state ON messages (state);

-- At most one message per thread in flight, whatever the callers do.
CREATE UNIQUE INDEX messages_one_sending_per_thread
    ON messages (team, channel, thread_ts) WHERE state = 'sending';

-- claim_due, next_due_in and oldest_due_age: due pending rows, expired sending rows.
CREATE INDEX messages_state_due ON messages (state, due_at);

CREATE TABLE claims (
    kind        text             NOT NULL,
    key         text             NOT NULL,
    claimed_at  double precision NOT NULL,
    PRIMARY KEY (kind, key)
);

CREATE TABLE feedback (
    id            bigserial        PRIMARY KEY,
    team          text             NOT NULL DEFAULT '',
    channel       text             NOT NULL,
    kind          text             NOT NULL,
    payload       text             NOT NULL,  -- JSON object
    dedupe_key    text             NULL UNIQUE,
    state         text             NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'failed')),
    attempts      integer          NOT NULL DEFAULT 0,
    due_at        double precision NOT NULL,
    lease_owner   text             NULL,
    lease_expires double precision NULL,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    last_error    text             NULL
);

-- At most one Slack call per channel in flight: a channel's calls are made in order.
CREATE UNIQUE INDEX feedback_one_sending_per_channel
    ON feedback (team, channel) WHERE state = 'sending';

-- claim_feedback: a channel's oldest open item; feedback_depth: open items.
CREATE INDEX feedback_channel_state ON feedback (team, channel, state, id);
CREATE INDEX feedback_state_due ON feedback (state, due_at);

CREATE TABLE leases (
    name       text             NOT NULL PRIMARY KEY,
    owner      text             NOT NULL,
    expires_at double precision NOT NULL
);
