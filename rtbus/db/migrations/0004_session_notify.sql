-- Tell every rtbus process at commit that sessions changed, so that their
-- session caches drop stale entries at once instead of waiting for the
-- cache to expire. Triggers cover every path: the SQL functions, the Python
-- API built on them, and direct UPDATEs by an application.
--
-- The payload is a 16-character prefix of the sid, never the whole sid (a
-- bearer credential): enough to find the cache entry, useless to log in.
-- '*' means "every session of this database" (group implications changed).

CREATE OR REPLACE FUNCTION rtbus_session_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revoked IS DISTINCT FROM OLD.revoked
       OR NEW.rotated_to IS DISTINCT FROM OLD.rotated_to
       OR NEW.expires IS DISTINCT FROM OLD.expires
       OR NEW.group_ids IS DISTINCT FROM OLD.group_ids
       OR NEW.uid IS DISTINCT FROM OLD.uid
       OR NEW.partner_id IS DISTINCT FROM OLD.partner_id THEN
        PERFORM pg_notify('rtbus_session', left(OLD.sid, 16));
    END IF;
    RETURN NULL;
END
$$;

-- Only a session that was still valid can sit in a cache: the garbage
-- collector's deletions of expired sessions stay silent.
CREATE OR REPLACE FUNCTION rtbus_session_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT OLD.revoked AND OLD.rotated_to IS NULL
       AND OLD.expires > (now() at time zone 'utc') THEN
        PERFORM pg_notify('rtbus_session', left(OLD.sid, 16));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION rtbus_groups_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rtbus_session', '*');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rtbus_session_changed ON rtbus_session;
CREATE TRIGGER rtbus_session_changed AFTER UPDATE ON rtbus_session
    FOR EACH ROW EXECUTE FUNCTION rtbus_session_changed();

DROP TRIGGER IF EXISTS rtbus_session_deleted ON rtbus_session;
CREATE TRIGGER rtbus_session_deleted AFTER DELETE ON rtbus_session
    FOR EACH ROW EXECUTE FUNCTION rtbus_session_deleted();

DROP TRIGGER IF EXISTS rtbus_groups_changed ON rtbus_group;
CREATE TRIGGER rtbus_groups_changed AFTER INSERT OR UPDATE OR DELETE ON rtbus_group
    FOR EACH STATEMENT EXECUTE FUNCTION rtbus_groups_changed();
