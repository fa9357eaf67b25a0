-- Initial schema: thread bindings, the outbox / relay log, and once-only claims.

CREATE TABLE bindings (
    team        TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    thread_ts   TEXT    NOT NULL,
    provider    TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    linked_by   TEXT    NOT NULL,
    linked_at   REAL    NOT NULL,
    muted       INTEGER NOT NULL DEFAULT 0 CHECK (muted IN (0, 1)),
    anchor_ts   TEXT    NULL,
    PRIMARY KEY (team, channel, thread_ts)
);

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    team        TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    thread_ts   TEXT    NOT NULL,
    ts          TEXT    NOT NULL,
    revision    TEXT    NOT NULL DEFAULT '',
    order_ts    TEXT    NOT NULL,
    -- order_ts as integer microseconds: exact ordering of Slack ts strings ("1700000000.000100").
    order_key   INTEGER NOT NULL,
    user        TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    files       TEXT    NOT NULL DEFAULT '[]',  -- JSON list of {"name", "permalink"}
    provider    TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'skipped')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT    NULL,
    detail      TEXT    NULL,
    received_at REAL    NOT NULL,
    updated_at  REAL    NOT NULL,
    UNIQUE (team, channel, ts, revision)
);

CREATE INDEX messages_thread_state_order
    ON messages (team, channel, thread_ts, state, order_key);

CREATE INDEX messages_state ON messages (state);

CREATE TABLE claims (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    claimed_at  REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
