-- The device registry's first table: enough for the bridge to know which devices exist.
-- The registry (devices/) grows it in later migrations.
CREATE TABLE devices (
    device_id   text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    device_type text NOT NULL DEFAULT 'watch',
    model       text,
    firmware    text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- The bridge keeps an in-memory set of active devices and reloads it on this notification.
CREATE FUNCTION carecall_devices_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('carecall_devices', '');
    RETURN NULL;
END $$;

CREATE TRIGGER devices_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
FOR EACH STATEMENT EXECUTE FUNCTION carecall_devices_changed();
