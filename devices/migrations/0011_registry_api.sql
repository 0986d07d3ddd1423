-- What the registry API needs beyond 0010: soft-deletable contacts, a device retirement that
-- also stops the bridge accepting the device, and indexes for the API's filters.

-- Contacts are retired, not deleted, so the audit trail can still name them. Priorities must
-- be unique only among the contacts still in use.
ALTER TABLE contacts ADD COLUMN retired_at timestamptz;
ALTER TABLE contacts DROP CONSTRAINT contacts_resident_id_priority_key;
CREATE UNIQUE INDEX contacts_live_priority ON contacts (resident_id, priority)
    WHERE retired_at IS NULL;

-- A retired device is inactive: the bridge's directory (LISTEN carecall_devices) drops it and
-- its broker credentials are forgotten, whichever way the row was retired (API, SQL, import).
CREATE FUNCTION carecall_device_retired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.retired_at IS NOT NULL THEN
        NEW.active := false;
        NEW.mqtt_password_hash := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_retired BEFORE INSERT OR UPDATE OF retired_at ON devices
FOR EACH ROW EXECUTE FUNCTION carecall_device_retired();

CREATE INDEX devices_type_idx ON devices (device_type);
CREATE INDEX residents_name_idx ON residents (lower(full_name) text_pattern_ops);
CREATE INDEX audit_record_idx ON audit_log (record_type, record_id);
