-- Sessions of the application's users, its groups, and user presence.
--
-- The application whose users rtbus serves owns these rows: it creates, rotates and
-- revokes sessions from its own transactions, in any language:
--
--   SELECT rtbus_session_create(42, 7, ARRAY[1, 3], 604800);   -- returns the sid
--   SELECT rtbus_session_rotate('<sid>');                       -- returns the new sid
--   SELECT rtbus_session_revoke('<sid>');
--
-- Timestamps are UTC without time zone, like bus_bus.

-- Group implication: holding group `id` means holding every group of `implied_ids`,
-- transitively (Odoo 19's all_group_ids).
CREATE TABLE IF NOT EXISTS rtbus_group (
    id integer PRIMARY KEY,
    name text NOT NULL DEFAULT '',
    implied_ids integer[] NOT NULL DEFAULT '{}'
);

CREATE TABLE IF NOT EXISTS rtbus_session (
    sid text PRIMARY KEY,
    uid integer,                            -- NULL: a public (anonymous) session
    partner_id integer,
    group_ids integer[] NOT NULL DEFAULT '{}',   -- held directly; see rtbus_effective_groups
    created timestamp without time zone NOT NULL DEFAULT (now() at time zone 'utc'),
    expires timestamp without time zone NOT NULL,
    revoked boolean NOT NULL DEFAULT false,
    rotated_to text,                        -- set once rotated: the sid that replaced this one
    is_websocket_session boolean NOT NULL DEFAULT false
);

-- The garbage collector deletes by expiry.
CREATE INDEX IF NOT EXISTS rtbus_session_expires_index ON rtbus_session (expires);
-- Revoking every session of a user (password change, "log out everywhere").
CREATE INDEX IF NOT EXISTS rtbus_session_uid_index ON rtbus_session (uid) WHERE uid IS NOT NULL;

-- The groups held directly plus every group they imply, transitively, sorted. UNION (not
-- UNION ALL) makes the recursion stop on implication cycles.
CREATE OR REPLACE FUNCTION rtbus_effective_groups(group_ids integer[]) RETURNS integer[]
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE closure(id) AS (
        SELECT unnest(coalesce(group_ids, '{}'::integer[]))
      UNION
        SELECT unnest(g.implied_ids) FROM rtbus_group g JOIN closure c ON g.id = c.id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM closure WHERE id IS NOT NULL
$$;

-- A new session id: 48 bytes from three v4 UUIDs (366 bits of randomness from
-- PostgreSQL's strong random source, which gen_random_uuid() uses), base64url without
-- padding: 64 characters of [A-Za-z0-9_-].
CREATE OR REPLACE FUNCTION rtbus_session_new_sid() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT translate(encode(
        decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                       || gen_random_uuid()::text, '-', ''), 'hex'),
        'base64'), '+/', '-_')
$$;

CREATE OR REPLACE FUNCTION rtbus_session_create(uid integer, partner_id integer,
                                                group_ids integer[], ttl_seconds integer)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_sid text := rtbus_session_new_sid();
BEGIN
    IF ttl_seconds IS NULL OR ttl_seconds <= 0 THEN
        RAISE EXCEPTION 'rtbus: a session lifetime must be a positive number of seconds, not %',
            ttl_seconds USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rtbus_session (sid, uid, partner_id, group_ids, expires)
    VALUES (new_sid, uid, partner_id, coalesce(group_ids, '{}'),
            (now() at time zone 'utc') + ttl_seconds * interval '1 second');
    RETURN new_sid;
END
$$;

-- Replace a valid session by a new one with the same user, groups and websocket flag and
-- the same lifetime counted from now. The old sid stops being valid at once. Returns NULL
-- when `sid` is missing, expired, revoked or already rotated: of two concurrent
-- rotations of one sid, the second waits for the first's row lock and then gets NULL.
CREATE OR REPLACE FUNCTION rtbus_session_rotate(sid text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    new_sid text := rtbus_session_new_sid();
    old rtbus_session%ROWTYPE;
    now_utc timestamp := now() at time zone 'utc';
BEGIN
    UPDATE rtbus_session s SET rotated_to = new_sid
     WHERE s.sid = rtbus_session_rotate.sid AND NOT s.revoked AND s.rotated_to IS NULL AND s.expires > now_utc
    RETURNING s.* INTO old;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO rtbus_session (sid, uid, partner_id, group_ids, created, expires,
                               is_websocket_session)
    VALUES (new_sid, old.uid, old.partner_id, old.group_ids, now_utc,
            now_utc + (old.expires - old.created), old.is_websocket_session);
    RETURN new_sid;
END
$$;

-- Revoke a session and every session it was rotated into: a logout presenting a stale
-- cookie must still end the session the browser holds now. Unknown sids are ignored.
CREATE OR REPLACE FUNCTION rtbus_session_revoke(sid text) RETURNS void
LANGUAGE sql VOLATILE AS $$
    WITH RECURSIVE chain(sid) AS (
        SELECT s.sid FROM rtbus_session s WHERE s.sid = rtbus_session_revoke.sid
      UNION
        SELECT s.rotated_to FROM rtbus_session s JOIN chain c ON s.sid = c.sid
         WHERE s.rotated_to IS NOT NULL
    )
    UPDATE rtbus_session s SET revoked = true
      FROM chain WHERE s.sid = chain.sid AND NOT s.revoked
$$;

-- Revoke every session of user `uid`; returns how many were still valid.
CREATE OR REPLACE FUNCTION rtbus_session_revoke_user(uid integer) RETURNS integer
LANGUAGE sql VOLATILE AS $$
    WITH done AS (
        UPDATE rtbus_session s SET revoked = true
         WHERE s.uid = rtbus_session_revoke_user.uid AND NOT s.revoked
        RETURNING (s.rotated_to IS NULL AND s.expires > (now() at time zone 'utc')) AS was_valid
    )
    SELECT count(*) FILTER (WHERE was_valid)::integer FROM done
$$;

-- One row per user who ever announced a presence. `previous_status` is the status before
-- the last write: an updater learns under the row lock whether it changed the status,
-- which a separate read could not tell under concurrency. partner_id is indexed for
-- missed-presence look-ups; last_poll is not, so that updates stay HOT (the garbage
-- collector's scan of one row per user is cheap).
CREATE TABLE IF NOT EXISTS rtbus_presence (
    user_id integer PRIMARY KEY,
    partner_id integer,
    last_poll timestamp without time zone NOT NULL DEFAULT (now() at time zone 'utc'),
    last_presence timestamp without time zone NOT NULL DEFAULT (now() at time zone 'utc'),
    status text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'away', 'offline')),
    previous_status text CHECK (previous_status IN ('online', 'away', 'offline'))
) WITH (fillfactor = 70);

CREATE INDEX IF NOT EXISTS rtbus_presence_partner_id_index ON rtbus_presence (partner_id);
