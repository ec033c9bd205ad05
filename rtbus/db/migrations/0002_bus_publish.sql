-- Publishing from SQL, for applications in any language, inside their own transaction:
--
--   SELECT rtbus_sendone('"broadcast"', 'notice', '{"text": "hello"}');
--   SELECT rtbus_sendone('["res.partner", 7]', 'mail.record/insert', '{"id": 3}');
--
-- The row is written exactly as the Python API writes it (compact JSON, channel
-- anchored to current_database()), and pg_notify('imbus', '[<channel>]') is queued in
-- the current database: PostgreSQL delivers it at commit and drops it on rollback, and
-- folds identical NOTIFYs of one transaction into one. rtbus dispatchers LISTEN on
-- every database they serve, so these are heard without going through `postgres`.
--
-- Caveat: jsonb does not keep object key order (it sorts keys by length, then bytes),
-- so a payload object is stored with its keys in that order.

-- Compact JSON text of a jsonb value: jsonb's own text output puts a space after
-- every ',' and ':', which would not match what Python stores. Scalars keep jsonb's
-- text, whose string escaping is the same as orjson's.
CREATE OR REPLACE FUNCTION rtbus_json_compact(value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    CASE jsonb_typeof(value)
    WHEN 'object' THEN
        RETURN '{' || coalesce(
            (SELECT string_agg(to_json(e.key)::text || ':' || rtbus_json_compact(e.value), ','
                               ORDER BY e.ord)
               FROM jsonb_each(value) WITH ORDINALITY AS e(key, value, ord)), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || coalesce(
            (SELECT string_agg(rtbus_json_compact(e.value), ',' ORDER BY e.ord)
               FROM jsonb_array_elements(value) WITH ORDINALITY AS e(value, ord)), '') || ']';
    ELSE
        RETURN value::text;
    END CASE;
END
$$;

-- The channel anchored to the current database, with the shapes the Python API takes:
-- "name" -> [db, "name"]; [model, id] / [model, id, sub] -> [db, model, id(, sub)];
-- an already-anchored [db, ...] passes through if db is this database.
CREATE OR REPLACE FUNCTION rtbus_channel_with_db(channel jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n integer;
    types text[];
BEGIN
    IF jsonb_typeof(channel) = 'string' THEN
        RETURN jsonb_build_array(current_database(), channel);
    END IF;
    IF channel IS NULL OR jsonb_typeof(channel) <> 'array' THEN
        RAISE EXCEPTION 'rtbus: a channel is a JSON string or array, not %', channel
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n := jsonb_array_length(channel);
    SELECT array_agg(jsonb_typeof(e.value) ORDER BY e.ord) INTO types
      FROM jsonb_array_elements(channel) WITH ORDINALITY AS e(value, ord);
    -- Record ids must be written as integers: 7, not 7.0 or 7e0 (Python rejects floats).
    IF n >= 2 AND types[2] = 'number' AND (channel->>1) !~ '^-?[0-9]+$' THEN
        types[2] := 'float';
    END IF;
    IF n >= 3 AND types[3] = 'number' AND (channel->>2) !~ '^-?[0-9]+$' THEN
        types[3] := 'float';
    END IF;
    IF types = ARRAY['string', 'number'] OR types = ARRAY['string', 'number', 'string'] THEN
        RETURN jsonb_build_array(current_database()) || channel;
    END IF;
    IF types = ARRAY['string', 'string'] OR types = ARRAY['string', 'string', 'number']
       OR types = ARRAY['string', 'string', 'number', 'string'] THEN
        IF channel->>0 <> current_database() THEN
            RAISE EXCEPTION 'rtbus: channel % is anchored to another database than %',
                channel, current_database() USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN channel;
    END IF;
    RAISE EXCEPTION 'rtbus: unknown channel shape %', channel
        USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- Queue one notification in the current transaction; returns the new bus_bus id.
CREATE OR REPLACE FUNCTION rtbus_sendone(channel jsonb, notification_type text, payload jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    channel_text text := rtbus_json_compact(rtbus_channel_with_db(channel));
    new_id integer;
BEGIN
    IF notification_type IS NULL THEN
        RAISE EXCEPTION 'rtbus: notification_type must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF octet_length(channel_text) > 1024 THEN
        RAISE EXCEPTION 'rtbus: channel is % bytes encoded, more than the 1024 allowed',
            octet_length(channel_text) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO bus_bus (channel, message)
    VALUES (channel_text,
            '{"type":' || to_json(notification_type)::text
            || ',"payload":' || rtbus_json_compact(coalesce(payload, 'null'::jsonb)) || '}')
    RETURNING id INTO new_id;
    PERFORM pg_notify('imbus', '[' || channel_text || ']');
    RETURN new_id;
END
$$;

-- When the garbage collector of bus_bus last ran (one row), for clients that ask
-- whether they may have missed notifications.
CREATE TABLE IF NOT EXISTS rtbus_bus_gc (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_run timestamp without time zone NOT NULL,
    deleted_rows bigint NOT NULL
);
