-- The bus table, laid out exactly as Odoo's bus.bus model stores it, so that an Odoo
-- database can be served as is (IF NOT EXISTS adopts an existing table).
CREATE TABLE IF NOT EXISTS bus_bus (
    id serial PRIMARY KEY,
    channel varchar,
    message varchar,
    create_date timestamp without time zone DEFAULT (now() at time zone 'utc'),
    create_uid integer,
    write_date timestamp without time zone DEFAULT (now() at time zone 'utc'),
    write_uid integer
);

-- The first poll of a page reads the last 50 s by create_date, and garbage collection
-- deletes by create_date.
CREATE INDEX IF NOT EXISTS bus_bus_create_date_index ON bus_bus (create_date);

-- Dispatch and later polls read "channel IN (...) AND id > last".
CREATE INDEX IF NOT EXISTS bus_bus_channel_id_index ON bus_bus (channel, id);

-- Periodic jobs of the cron worker; running_pid marks a job taken by a process.
CREATE TABLE IF NOT EXISTS rtbus_cron (
    name varchar PRIMARY KEY,
    interval_seconds integer NOT NULL,
    lastcall timestamp,
    nextcall timestamp NOT NULL DEFAULT (now() at time zone 'utc'),
    running_pid integer
);
