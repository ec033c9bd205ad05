-- Stream positions that do not depend on time (issue 14; docs/architecture.md, "Delivery").
--
-- Every bus_bus row records the transaction that inserted it (xact, filled by a trigger,
-- so plain-SQL publishers keep working unchanged). Every dispatcher wake-up that finds
-- new rows records an *epoch*: a number and the snapshot it read with. A row's stream
-- position is (the first epoch whose snapshot sees its transaction, its id); clients
-- receive rows in that order, and a client's `last` (an id) maps back to a position
-- through the epochs, on any process or node.

ALTER TABLE bus_bus ADD COLUMN IF NOT EXISTS xact xid8;

CREATE OR REPLACE FUNCTION rtbus_bus_set_xact() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.xact := pg_current_xact_id();
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rtbus_bus_xact ON bus_bus;
CREATE TRIGGER rtbus_bus_xact BEFORE INSERT ON bus_bus
    FOR EACH ROW EXECUTE FUNCTION rtbus_bus_set_xact();

-- The next read looks up the rows of transactions that were in progress.
CREATE INDEX IF NOT EXISTS bus_bus_xact_index ON bus_bus (xact);

-- One row per epoch. max_id is the highest id visible at that epoch: a row whose id
-- lies in (max_id of the previous epoch, max_id] and that `snap` sees belongs to it.
CREATE TABLE IF NOT EXISTS rtbus_bus_stream (
    epoch bigint PRIMARY KEY,
    snap pg_snapshot NOT NULL,
    max_id bigint NOT NULL,
    create_date timestamp without time zone NOT NULL DEFAULT (now() at time zone 'utc')
);
CREATE INDEX IF NOT EXISTS rtbus_bus_stream_max_id_index ON rtbus_bus_stream (max_id, epoch);

-- Rows that became visible after a higher id had (their transaction stayed open): the
-- epoch that saw them first. Rare; everything else is placed by max_id.
CREATE TABLE IF NOT EXISTS rtbus_bus_late (
    id bigint NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (id, epoch)
);
CREATE INDEX IF NOT EXISTS rtbus_bus_late_epoch_index ON rtbus_bus_late (epoch);

-- The epoch of row `p_id` (NULL: no recorded epoch sees it yet).
CREATE OR REPLACE FUNCTION rtbus_bus_epoch_of(p_id bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT max(l.epoch) FROM rtbus_bus_late l WHERE l.id = p_id),
        (SELECT s.epoch FROM rtbus_bus_stream s WHERE s.max_id >= p_id
          ORDER BY s.max_id, s.epoch LIMIT 1))
$$;

-- One dispatcher wake-up, in one round trip: record an epoch if rows became visible
-- since the newest epoch, and return the rows of the epochs after `p_after` (NULL: none,
-- just advance). The first row returned is a header: (newest epoch, NULL..., regressed).
-- Epochs are numbered under an advisory lock taken before the snapshot of the statement
-- that reads, so a higher epoch always has a later snapshot, whoever recorded it.
-- Regressions (ids or transaction ids lower than the newest epoch knows, or `p_after`
-- above the newest epoch) restart the stream: old epochs are deleted, one base epoch
-- holds everything visible, and its recent rows are returned.
CREATE OR REPLACE FUNCTION rtbus_bus_stream_next(p_after bigint, p_backlog double precision)
RETURNS TABLE (epoch bigint, id integer, channel varchar, message varchar, recent boolean,
               regressed boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    prev rtbus_bus_stream%ROWTYPE;
    have_prev boolean;
    top bigint;
    after_max bigint;
    restarted boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(7526834122409276275);
    SELECT * INTO prev FROM rtbus_bus_stream s ORDER BY s.epoch DESC LIMIT 1;
    have_prev := FOUND;
    IF have_prev THEN
        SELECT max(b.id) INTO top FROM bus_bus b;
        IF coalesce(top, 0) < prev.max_id
           OR pg_snapshot_xmax(pg_current_snapshot()) < pg_snapshot_xmax(prev.snap)
           OR p_after > prev.epoch THEN
            DELETE FROM rtbus_bus_late;
            DELETE FROM rtbus_bus_stream;
            INSERT INTO rtbus_bus_stream (epoch, snap, max_id)
            SELECT prev.epoch + 1, pg_current_snapshot(), coalesce(max(b.id), 0) FROM bus_bus b
            RETURNING * INTO prev;
            RETURN QUERY
                SELECT prev.epoch, NULL::integer, NULL::varchar, NULL::varchar, NULL::boolean, true
                UNION ALL
                SELECT prev.epoch, b.id, b.channel, b.message, true, true FROM bus_bus b
                 WHERE b.create_date >= (now() at time zone 'utc') - p_backlog * interval '1 second'
                   AND coalesce(pg_visible_in_snapshot(b.xact, prev.snap), true);
            RETURN;
        END IF;
    ELSE
        INSERT INTO rtbus_bus_stream (epoch, snap, max_id)
        SELECT 1, pg_current_snapshot(), coalesce(max(b.id), 0) FROM bus_bus b
        RETURNING * INTO prev;
        RETURN QUERY SELECT prev.epoch, NULL::integer, NULL::varchar, NULL::varchar,
                            NULL::boolean, false;
        RETURN;
    END IF;
    IF p_after IS NULL THEN
        p_after := prev.epoch + 1;     -- nothing to return, only advance
    ELSIF p_after < (SELECT min(s.epoch) FROM rtbus_bus_stream s) THEN
        -- Another caller restarted the stream since this one's last read: the same
        -- as a regression seen here (the recent rows, from the base epoch on).
        restarted := true;
        p_after := (SELECT min(s.epoch) FROM rtbus_bus_stream s) - 1;
        after_max := 0;
    END IF;
    IF p_after < prev.epoch AND NOT restarted THEN
        -- Other processes recorded epochs since this caller's last read.
        after_max := coalesce(
            (SELECT s.max_id FROM rtbus_bus_stream s WHERE s.epoch <= p_after
              ORDER BY s.epoch DESC LIMIT 1),
            (SELECT min(s.max_id) FROM rtbus_bus_stream s));
    END IF;
    RETURN QUERY
    WITH fresh AS MATERIALIZED (
        SELECT b.id, b.channel, b.message, b.create_date FROM bus_bus b
         WHERE b.id > prev.max_id
            OR b.xact = ANY(ARRAY(SELECT pg_snapshot_xip(prev.snap)))
            OR b.xact >= pg_snapshot_xmax(prev.snap)
    ), recorded AS (
        INSERT INTO rtbus_bus_stream (epoch, snap, max_id)
        SELECT prev.epoch + 1, pg_current_snapshot(), greatest(prev.max_id, max(f.id))
          FROM fresh f HAVING count(*) > 0
        RETURNING epoch
    ), late AS (
        INSERT INTO rtbus_bus_late (id, epoch)
        SELECT f.id, prev.epoch + 1 FROM fresh f WHERE f.id <= prev.max_id
    )
    SELECT coalesce((SELECT r.epoch FROM recorded r), prev.epoch), NULL::integer,
           NULL::varchar, NULL::varchar, NULL::boolean, restarted
    UNION ALL
    SELECT prev.epoch + 1, f.id, f.channel, f.message,
           f.create_date >= (now() at time zone 'utc') - p_backlog * interval '1 second', false
      FROM fresh f WHERE p_after <= prev.epoch
    UNION ALL
    SELECT rtbus_bus_epoch_of(b.id), b.id, b.channel, b.message,
           b.create_date >= (now() at time zone 'utc') - p_backlog * interval '1 second', false
      FROM bus_bus b
     WHERE p_after < prev.epoch
       AND (b.id > after_max
            OR b.id IN (SELECT l.id FROM rtbus_bus_late l WHERE l.epoch > p_after))
       AND coalesce(pg_visible_in_snapshot(b.xact, prev.snap), true)
       AND (NOT restarted
            OR b.create_date >= (now() at time zone 'utc') - p_backlog * interval '1 second');
END
$$;

-- The rows after stream position (p_epoch, p_id) on `p_channels` that epoch `p_cur`
-- sees, in stream order, at most `p_limit`. p_epoch NULL: the position of row p_id
-- (row 0, or an id above every id: the last p_backlog seconds instead, Odoo's rule).
-- p_window: only rows created in the last p_backlog seconds. An id older than every
-- epoch kept (the resume horizon) falls back to "id > p_id". The first row returned is
-- the start as resolved: (epoch, id, NULL, NULL, window); epoch -1 means "by id only".
CREATE OR REPLACE FUNCTION rtbus_bus_replay(p_epoch bigint, p_id bigint, p_window boolean,
                                            p_cur bigint, p_channels varchar[],
                                            p_backlog double precision, p_limit integer)
RETURNS TABLE (epoch bigint, id integer, channel varchar, message varchar, recent boolean)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    cur_snap pg_snapshot;
    oldest_max bigint;
    since timestamp := (now() at time zone 'utc') - p_backlog * interval '1 second';
BEGIN
    SELECT s.snap INTO cur_snap FROM rtbus_bus_stream s WHERE s.epoch = p_cur;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_epoch IS NULL THEN
        IF p_id = 0 OR p_id > (SELECT coalesce(max(b.id), 0) FROM bus_bus b) THEN
            p_window := true;
            p_epoch := -1;
            p_id := 0;
        ELSE
            SELECT min(s.max_id) INTO oldest_max FROM rtbus_bus_stream s;
            p_epoch := rtbus_bus_epoch_of(p_id);
            IF p_epoch IS NULL OR p_id <= oldest_max
               AND NOT EXISTS (SELECT 1 FROM rtbus_bus_late l WHERE l.id = p_id) THEN
                -- Beyond the horizon (or before the first epoch): by id only.
                p_epoch := -1;
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT p_epoch, p_id::integer, NULL::varchar, NULL::varchar, p_window;
    IF p_window THEN
        RETURN QUERY
        SELECT e.epoch, b.id, b.channel, b.message, true
          FROM bus_bus b CROSS JOIN LATERAL (SELECT rtbus_bus_epoch_of(b.id) AS epoch) e
         WHERE b.channel = ANY(p_channels) AND b.create_date >= since
           AND coalesce(pg_visible_in_snapshot(b.xact, cur_snap), true)
           AND (e.epoch, b.id) > (p_epoch, p_id)
         ORDER BY e.epoch, b.id LIMIT p_limit;
    ELSE
        RETURN QUERY
        SELECT e.epoch, b.id, b.channel, b.message, b.create_date >= since
          FROM bus_bus b CROSS JOIN LATERAL (SELECT rtbus_bus_epoch_of(b.id) AS epoch) e
         WHERE b.channel = ANY(p_channels)
           AND (b.id > p_id
                OR p_epoch >= 0 AND b.id IN (SELECT l.id FROM rtbus_bus_late l
                                              WHERE l.epoch > p_epoch AND l.epoch <= p_cur))
           AND coalesce(pg_visible_in_snapshot(b.xact, cur_snap), true)
           AND (p_epoch < 0 OR (e.epoch, b.id) > (p_epoch, p_id))
         ORDER BY e.epoch, b.id LIMIT p_limit;
    END IF;
END
$$;
