-- A replay page costs its page, not the whole backlog behind it.
--
-- 0006's rtbus_bus_replay placed every row after the client's position (one
-- rtbus_bus_epoch_of call each) and sorted them all to return the first p_limit: a
-- 30,000-row catch-up paid about 0.4 s per page for 36 pages. Same arguments, same rows,
-- same order here, from a bounded set of candidates:
--
-- * A row that is not in rtbus_bus_late is placed by max_id, and max_id never decreases
--   from one epoch to the next, so among those rows stream order is id order. The first
--   p_limit of them by id (after the cheap filters) hold every one of them the page can
--   return. Their ids start above the client's: above p_id, and above the max_id of the
--   epochs before p_epoch (such rows belong to p_epoch or later), or, for the window,
--   at its first row.
-- * The late rows that can follow the position are few (a transaction that stayed open):
--   those of the epochs from p_epoch on, or, by id only, those above the floor.
--
-- The full filter of 0006 then runs on these candidates only.

CREATE OR REPLACE FUNCTION rtbus_bus_replay(p_epoch bigint, p_id bigint, p_window boolean,
                                            p_cur bigint, p_channels varchar[],
                                            p_backlog double precision, p_limit integer)
RETURNS TABLE (epoch bigint, id integer, channel varchar, message varchar, recent boolean)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    cur_snap pg_snapshot;
    oldest_max bigint;
    floor_id bigint;
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
    IF p_epoch >= 0 THEN
        floor_id := greatest(p_id, coalesce(
            (SELECT s.max_id FROM rtbus_bus_stream s WHERE s.epoch < p_epoch
              ORDER BY s.epoch DESC LIMIT 1), 0));
    ELSIF p_window THEN
        floor_id := coalesce((SELECT min(b.id) FROM bus_bus b WHERE b.create_date >= since) - 1,
                             2147483647);
    ELSE
        floor_id := p_id;
    END IF;
    RETURN QUERY
    WITH candidates AS MATERIALIZED (
        (SELECT b.id FROM bus_bus b
          WHERE b.channel = ANY(p_channels) AND b.id > floor_id
            AND (NOT p_window OR b.create_date >= since)
            AND coalesce(pg_visible_in_snapshot(b.xact, cur_snap), true)
            AND NOT EXISTS (SELECT 1 FROM rtbus_bus_late l WHERE l.id = b.id)
          ORDER BY b.id LIMIT p_limit)
        UNION ALL
        SELECT l.id FROM rtbus_bus_late l
         WHERE p_epoch >= 0 AND l.epoch >= p_epoch OR p_epoch < 0 AND l.id > floor_id
    ), placed AS MATERIALIZED (    -- the epochs of the candidates only
        SELECT rtbus_bus_epoch_of(b.id) AS epoch, b.id, b.channel, b.message, b.create_date, b.xact
          FROM candidates c JOIN bus_bus b ON b.id = c.id
    )
    SELECT b.epoch, b.id, b.channel, b.message, b.create_date >= since
      FROM placed b
     WHERE b.channel = ANY(p_channels)
       AND coalesce(pg_visible_in_snapshot(b.xact, cur_snap), true)
       AND CASE WHEN p_window THEN
                b.create_date >= since AND (b.epoch, b.id) > (p_epoch, p_id)
           ELSE
                (b.id > p_id
                 OR p_epoch >= 0 AND b.id IN (SELECT l.id FROM rtbus_bus_late l
                                               WHERE l.epoch > p_epoch AND l.epoch <= p_cur))
                AND (p_epoch < 0 OR (b.epoch, b.id) > (p_epoch, p_id))
           END
     ORDER BY b.epoch, b.id LIMIT p_limit;
END
$$;
