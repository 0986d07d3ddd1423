-- Staff sessions that follow the staff table, and a login throttle shared by every process.
-- See docs/registry.md ("Tokens and sessions", "Failed logins").

-- A token carries the token_version of its user; a token of another version is refused. The
-- version moves when the password changes or the user is retired (or brought back), so those
-- revoke every token already issued. Role and scope changes need no new version: each request
-- reads them from the server's copy of this table, so they take effect at once.
ALTER TABLE staff_users ADD COLUMN token_version integer NOT NULL DEFAULT 0;

CREATE FUNCTION carecall_staff_token_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       OR NEW.retired_at IS DISTINCT FROM OLD.retired_at THEN
        NEW.token_version := OLD.token_version + 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER staff_users_token_version BEFORE UPDATE ON staff_users
FOR EACH ROW EXECUTE FUNCTION carecall_staff_token_version();

-- Every server process keeps a copy of the access-relevant columns (devices/staff.py) and
-- LISTENs here; the payload is the user id. Fired whichever way the row changed (API, SQL,
-- carecall create-staff).
CREATE FUNCTION carecall_staff_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('carecall_staff', OLD.user_id::text);
    ELSE
        PERFORM pg_notify('carecall_staff', NEW.user_id::text);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER staff_users_changed AFTER INSERT OR UPDATE OR DELETE ON staff_users
FOR EACH ROW EXECUTE FUNCTION carecall_staff_changed();

-- Failed-login counters, per key ('user:<name>' or 'ip:<address>'), on the database's clock so
-- that every front process (and a restarted one) sees the same lockout. Rows that no longer
-- lock anything are pruned (devices/login.py), and the table is capped.
CREATE TABLE login_throttle (
    key              text PRIMARY KEY,
    failures         integer NOT NULL,
    last_failure_at  timestamptz NOT NULL,
    locked_until     timestamptz
);
CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_at);
CREATE INDEX login_throttle_relevance_idx ON login_throttle ((coalesce(locked_until, last_failure_at)));
