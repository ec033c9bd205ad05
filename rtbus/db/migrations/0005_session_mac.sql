-- Session ids that carry a MAC, so that a forged one is refused without a query.
--
-- Every session id rtbus issues from now on (rtbus_session_create, rtbus_session_rotate,
-- the Python API and the routes built on them) is
--
--     'rb1_' || base64url(nonce || left(HMAC-SHA256(key, nonce), 16))
--
-- with a 32-byte random nonce: 68 characters of [A-Za-z0-9_-]. `key` is this database's
-- secret below, made once here and read by every rtbus process at start, on every node.
-- A sid of that shape whose MAC does not match was not issued by rtbus: it is refused
-- before reaching the database. Sessions made before this migration (64 characters)
-- and the application's own sids keep working; their look-ups are budgeted per client.
--
-- Whoever can read this table can forge sids that pass the MAC check (they are then
-- looked up, and found only if the session exists): grant it like rtbus_session.

CREATE TABLE IF NOT EXISTS rtbus_session_secret (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    key bytea NOT NULL CHECK (length(key) = 64),     -- one SHA-256 block
    created timestamp without time zone NOT NULL DEFAULT (now() at time zone 'utc')
);

-- 64 bytes from four v4 UUIDs: 488 bits from PostgreSQL's strong random source.
INSERT INTO rtbus_session_secret (id, key)
VALUES (1, decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                          || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))
ON CONFLICT (id) DO NOTHING;

-- `data` with every byte XORed with `pad` (HMAC's inner and outer key pads).
CREATE OR REPLACE FUNCTION rtbus_session_xor(data bytea, pad integer) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    result bytea := data;
BEGIN
    FOR i IN 0 .. length(data) - 1 LOOP
        result := set_byte(result, i, get_byte(data, i) # pad);
    END LOOP;
    RETURN result;
END
$$;

-- HMAC-SHA256 (RFC 2104) of `message` under this database's secret, with the built-in
-- sha256() only: no pgcrypto needed.
CREATE OR REPLACE FUNCTION rtbus_session_mac(message bytea) RETURNS bytea
LANGUAGE sql STABLE STRICT AS $$
    SELECT sha256(rtbus_session_xor(s.key, 92) || sha256(rtbus_session_xor(s.key, 54) || message))
      FROM rtbus_session_secret s WHERE s.id = 1
$$;

CREATE OR REPLACE FUNCTION rtbus_session_new_sid() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    nonce bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                          'hex');
    mac bytea := rtbus_session_mac(nonce);
BEGIN
    IF mac IS NULL THEN
        RAISE EXCEPTION 'rtbus: rtbus_session_secret is empty; re-run migration 0005'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN 'rb1_' || translate(encode(nonce || substring(mac FROM 1 FOR 16), 'base64'), '+/', '-_');
END
$$;
