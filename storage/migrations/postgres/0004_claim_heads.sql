-- Head markers (SQLite's migration 4 too): a claim reads only the one candidate of each thread (of each
-- channel, for feedback) instead of probing every pending row for an earlier one, so a deep backlog
-- in one thread no longer makes every claim scan it.
--
-- head marks a thread's head: its 'sending' row if it has one, else its first 'pending' row by
-- (order_key, id); exactly one per thread with open rows, none on final rows. Triggers keep it so
-- in the transaction of every change that can move it: an insert of an open row, or a state change
-- other than a claim's pending -> sending (which leaves the head where it is). For feedback the
-- same holds per (team, channel), in id order.
--
-- Concurrency. A trigger first takes the thread's (channel's) transaction-scoped advisory lock, so
-- the changes that move one thread's head run one at a time, each to its commit; its queries then
-- see everything committed before it got the lock (a VOLATILE plpgsql function takes a fresh
-- snapshot for each query under READ COMMITTED). The store's fenced updates and drop_pending take
-- the lock in their WHERE clause, before they lock their row, so that lock holders and row lockers
-- always meet in that order (no deadlock). Claims take no advisory lock and never move a head; the
-- one thing a lock holder may meet is a claim turning the pending head it is about to unmark into a
-- sending row: the conditional update then changes nothing, and the trigger looks again.

ALTER TABLE messages ADD COLUMN head boolean NOT NULL DEFAULT false;
ALTER TABLE feedback ADD COLUMN head boolean NOT NULL DEFAULT false;

-- Each thread's sending row, else its first pending row.
UPDATE messages SET head = true WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY team, channel, thread_ts ORDER BY state = 'sending' DESC, order_key, id
        ) AS n
        FROM messages WHERE state IN ('pending', 'sending')
    ) AS open_rows WHERE n = 1
);

-- Each channel's sending item, else its oldest pending item.
UPDATE feedback SET head = true WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY team, channel ORDER BY state = 'sending' DESC, id) AS n
        FROM feedback WHERE state IN ('pending', 'sending')
    ) AS open_items WHERE n = 1
);

-- At most one head per thread (per channel), whatever a caller does; also the lookup of the head.
CREATE UNIQUE INDEX messages_one_head_per_thread ON messages (team, channel, thread_ts) WHERE head;
CREATE UNIQUE INDEX feedback_one_head_per_channel ON feedback (team, channel) WHERE head;

-- claim_due / claim_feedback: due pending heads and expired sending heads, oldest due_at first.
CREATE INDEX messages_heads_due ON messages (state, due_at, id) WHERE head;
CREATE INDEX feedback_heads_due ON feedback (state, due_at, id) WHERE head;

-- The advisory locks: two-key form (never the single-key space of the migration lock), the first
-- key naming the queue, the second a hash of the thread or channel (a collision only makes two
-- threads wait for each other). The lock functions return true, to be called in a WHERE clause.
CREATE FUNCTION relay_channel_key(key_team text, key_channel text) RETURNS integer
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT hashtext(key_team || chr(31) || key_channel) $$;

CREATE FUNCTION relay_lock_thread(lock_team text, lock_channel text, lock_thread_ts text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1, hashtext(lock_team || chr(31) || lock_channel || chr(31) || lock_thread_ts));
    RETURN true;
END
$$;

CREATE FUNCTION relay_lock_channel(lock_team text, lock_channel text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(2, relay_channel_key(lock_team, lock_channel));
    RETURN true;
END
$$;

-- Move the thread's mark to its rightful head, touching only the marked row and the rightful one
-- (indexed lookups: messages_one_sending_per_thread, messages_thread_state_order,
-- messages_one_head_per_thread). The mark leaves the old head before it goes to the new one, so the
-- unique index never sees two. Each retry of the loop follows a change another transaction
-- committed meanwhile (a claim of the marked row, a drop of the rightful one).
CREATE FUNCTION relay_messages_head() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    rightful bigint;
    marked bigint;
BEGIN
    PERFORM relay_lock_thread(NEW.team, NEW.channel, NEW.thread_ts);
    FOR attempt IN 1..100 LOOP
        SELECT m.id INTO rightful FROM messages m
        WHERE m.team = NEW.team AND m.channel = NEW.channel AND m.thread_ts = NEW.thread_ts
          AND m.state = 'sending';
        IF NOT FOUND THEN
            SELECT m.id INTO rightful FROM messages m
            WHERE m.team = NEW.team AND m.channel = NEW.channel AND m.thread_ts = NEW.thread_ts
              AND m.state = 'pending'
            ORDER BY m.order_key, m.id LIMIT 1;
        END IF;
        SELECT m.id INTO marked FROM messages m
        WHERE m.team = NEW.team AND m.channel = NEW.channel AND m.thread_ts = NEW.thread_ts AND m.head;
        IF marked IS NOT DISTINCT FROM rightful THEN
            RETURN NULL;
        END IF;
        IF marked IS NOT NULL THEN
            -- Not if a claim put it in flight meanwhile: it is the rightful head then.
            UPDATE messages SET head = false WHERE id = marked AND head AND state <> 'sending';
            CONTINUE WHEN NOT FOUND;
        END IF;
        IF rightful IS NULL THEN
            RETURN NULL;
        END IF;
        UPDATE messages SET head = true WHERE id = rightful AND NOT head AND state IN ('pending', 'sending');
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'the head of thread % % % did not settle', NEW.team, NEW.channel, NEW.thread_ts;
END
$$;

CREATE FUNCTION relay_feedback_head() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    rightful bigint;
    marked bigint;
BEGIN
    PERFORM relay_lock_channel(NEW.team, NEW.channel);
    FOR attempt IN 1..100 LOOP
        SELECT f.id INTO rightful FROM feedback f
        WHERE f.team = NEW.team AND f.channel = NEW.channel AND f.state = 'sending';
        IF NOT FOUND THEN
            SELECT f.id INTO rightful FROM feedback f
            WHERE f.team = NEW.team AND f.channel = NEW.channel AND f.state = 'pending'
            ORDER BY f.id LIMIT 1;
        END IF;
        SELECT f.id INTO marked FROM feedback f
        WHERE f.team = NEW.team AND f.channel = NEW.channel AND f.head;
        IF marked IS NOT DISTINCT FROM rightful THEN
            RETURN NULL;
        END IF;
        IF marked IS NOT NULL THEN
            UPDATE feedback SET head = false WHERE id = marked AND head AND state <> 'sending';
            CONTINUE WHEN NOT FOUND;
        END IF;
        IF rightful IS NULL THEN
            RETURN NULL;
        END IF;
        UPDATE feedback SET head = true WHERE id = rightful AND NOT head AND state IN ('pending', 'sending');
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'the head of channel % % did not settle', NEW.team, NEW.channel;
END
$$;

CREATE TRIGGER messages_head_on_insert AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.state IN ('pending', 'sending'))
    EXECUTE FUNCTION relay_messages_head();
CREATE TRIGGER messages_head_on_state AFTER UPDATE OF state ON messages
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NOT (OLD.state = 'pending' AND NEW.state = 'sending'))
    EXECUTE FUNCTION relay_messages_head();
CREATE TRIGGER feedback_head_on_insert AFTER INSERT ON feedback
    FOR EACH ROW WHEN (NEW.state IN ('pending', 'sending'))
    EXECUTE FUNCTION relay_feedback_head();
CREATE TRIGGER feedback_head_on_state AFTER UPDATE OF state ON feedback
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NOT (OLD.state = 'pending' AND NEW.state = 'sending'))
    EXECUTE FUNCTION relay_feedback_head();
