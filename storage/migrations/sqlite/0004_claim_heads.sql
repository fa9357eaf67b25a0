-- Head markers: a claim reads only the one candidate of each thread (of each channel, for feedback)
-- instead of probing every pending row for an earlier one, so a deep backlog in one thread no longer
-- makes every claim scan it.
--
-- head = 1 marks a thread's head: its 'sending' row if it has one, else its first 'pending' row by
-- (order_key, id); exactly one per thread with open rows, none on final rows. The triggers below
-- keep it so in the statement of every change that can move it (an insert of an open row; a state
-- change other than a claim's pending -> sending, which leaves the head where it is): they look up
-- the rightful head and the marked one (indexed lookups) and move the mark when they differ. For
-- feedback the same holds per (team, channel), in id order.

ALTER TABLE messages ADD COLUMN head INTEGER NOT NULL DEFAULT 0 CHECK (head IN (0, 1));
ALTER TABLE feedback ADD COLUMN head INTEGER NOT NULL DEFAULT 0 CHECK (head IN (0, 1));

-- Each thread's sending row, else its first pending row.
UPDATE messages SET head = 1 WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY team, channel, thread_ts ORDER BY state = 'sending' DESC, order_key, id
        ) AS n
        FROM messages WHERE state IN ('pending', 'sending')
    ) WHERE n = 1
);

-- Each channel's sending item, else its oldest pending item.
UPDATE feedback SET head = 1 WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY team, channel ORDER BY state = 'sending' DESC, id
        ) AS n
        FROM feedback WHERE state IN ('pending', 'sending')
    ) WHERE n = 1
);

-- At most one head per thread (per channel), whatever a caller does; also the lookup of the head.
CREATE UNIQUE INDEX messages_one_head_per_thread ON messages (team, channel, thread_ts) WHERE head = 1;
CREATE UNIQUE INDEX feedback_one_head_per_channel ON feedback (team, channel) WHERE head = 1;

-- claim_due / claim_feedback: due pending heads and expired sending heads, oldest due_at first.
CREATE INDEX messages_heads_due ON messages (state, due_at) WHERE head = 1;
CREATE INDEX feedback_heads_due ON feedback (state, due_at) WHERE head = 1;

-- The mark leaves a head that is no longer rightful before it goes to the rightful one (so that
-- the unique index never sees two). The rightful head is looked up through
-- messages_one_sending_per_thread and messages_thread_state_order (whose entries end with the
-- rowid, i.e. id), the marked one through messages_one_head_per_thread.
CREATE TRIGGER messages_head_on_insert AFTER INSERT ON messages
WHEN NEW.state IN ('pending', 'sending')
BEGIN
    UPDATE messages SET head = 0
    WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts AND head = 1
      AND id IS NOT COALESCE(
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'sending'),
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'pending' ORDER BY order_key, id LIMIT 1));
    UPDATE messages SET head = 1
    WHERE head = 0 AND id = COALESCE(
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'sending'),
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'pending' ORDER BY order_key, id LIMIT 1));
END;

CREATE TRIGGER messages_head_on_state AFTER UPDATE OF state ON messages
WHEN OLD.state IS NOT NEW.state AND NOT (OLD.state = 'pending' AND NEW.state = 'sending')
BEGIN
    UPDATE messages SET head = 0
    WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts AND head = 1
      AND id IS NOT COALESCE(
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'sending'),
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'pending' ORDER BY order_key, id LIMIT 1));
    UPDATE messages SET head = 1
    WHERE head = 0 AND id = COALESCE(
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'sending'),
          (SELECT id FROM messages
           WHERE team = NEW.team AND channel = NEW.channel AND thread_ts = NEW.thread_ts
             AND state = 'pending' ORDER BY order_key, id LIMIT 1));
END;

CREATE TRIGGER feedback_head_on_insert AFTER INSERT ON feedback
WHEN NEW.state IN ('pending', 'sending')
BEGIN
    UPDATE feedback SET head = 0
    WHERE team = NEW.team AND channel = NEW.channel AND head = 1
      AND id IS NOT COALESCE(
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'sending'),
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'pending' ORDER BY id LIMIT 1));
    UPDATE feedback SET head = 1
    WHERE head = 0 AND id = COALESCE(
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'sending'),
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'pending' ORDER BY id LIMIT 1));
END;

CREATE TRIGGER feedback_head_on_state AFTER UPDATE OF state ON feedback
WHEN OLD.state IS NOT NEW.state AND NOT (OLD.state = 'pending' AND NEW.state = 'sending')
BEGIN
    UPDATE feedback SET head = 0
    WHERE team = NEW.team AND channel = NEW.channel AND head = 1
      AND id IS NOT COALESCE(
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'sending'),
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'pending' ORDER BY id LIMIT 1));
    UPDATE feedback SET head = 1
    WHERE head = 0 AND id = COALESCE(
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'sending'),
          (SELECT id FROM feedback
           WHERE team = NEW.team AND channel = NEW.channel AND state = 'pending' ORDER BY id LIMIT 1));
END;
