-- The registry: the four-level service network, residents, their contacts, their devices and
-- the staff who serve a part of the network. Access is scoped by ltree paths: a staff user
-- with scope 'sjz.changan' sees everything whose area_path <@ 'sjz.changan', in one indexed
-- query (GiST on the path columns).
CREATE EXTENSION IF NOT EXISTS ltree;

-- city -> district -> street -> community. ``path`` is the chain of area ids from the city
-- down, e.g. sjz.changan.jianbei.c001; its depth is the level (1..4).
CREATE TABLE areas (
    area_id     text PRIMARY KEY CHECK (area_id ~ '^[a-z0-9_]{1,48}$'),
    path        ltree NOT NULL UNIQUE,
    level       text NOT NULL CHECK (level IN ('city', 'district', 'street', 'community')),
    name        text NOT NULL,
    name_zh     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    CHECK (nlevel(path) = CASE level WHEN 'city' THEN 1 WHEN 'district' THEN 2
                                     WHEN 'street' THEN 3 ELSE 4 END),
    CHECK (subpath(path, nlevel(path) - 1, 1)::text = area_id)
);
CREATE INDEX areas_path_gist ON areas USING gist (path);

CREATE TABLE residents (
    resident_id     bigserial PRIMARY KEY,
    full_name       text NOT NULL,
    birth_year      integer CHECK (birth_year BETWEEN 1890 AND 2100),
    sex             text CHECK (sex IN ('female', 'male', 'other')),
    phone           text,
    address         text NOT NULL DEFAULT '',
    community_id    text NOT NULL REFERENCES areas (area_id),
    -- The community's path, copied here (kept by trigger) so scoped queries need no join.
    area_path       ltree NOT NULL,
    home_lat        double precision CHECK (home_lat BETWEEN -90 AND 90),
    home_lon        double precision CHECK (home_lon BETWEEN -180 AND 180),
    medical_notes   text NOT NULL DEFAULT '',
    spo2_scale      smallint NOT NULL DEFAULT 1 CHECK (spo2_scale IN (1, 2)),
    -- Per-resident rule overrides, in the rules file's shape (validated by alerts.rules).
    rule_overrides  jsonb NOT NULL DEFAULT '{}'::jsonb,
    waking_start    time NOT NULL DEFAULT '07:00',
    waking_end      time NOT NULL DEFAULT '21:30',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz
);
CREATE INDEX residents_area_gist ON residents USING gist (area_path);
CREATE INDEX residents_community_idx ON residents (community_id);

-- Whom to call, in order: family first, then the community helper, then the grid worker.
CREATE TABLE contacts (
    contact_id   bigserial PRIMARY KEY,
    resident_id  bigint NOT NULL REFERENCES residents (resident_id) ON DELETE CASCADE,
    priority     smallint NOT NULL CHECK (priority BETWEEN 1 AND 20),
    role         text NOT NULL CHECK (role IN ('family', 'community_helper', 'grid_worker',
                                                'doctor', 'neighbour', 'other')),
    name         text NOT NULL,
    phone        text NOT NULL,
    relation     text,
    UNIQUE (resident_id, priority)
);

ALTER TABLE devices
    ADD COLUMN resident_id bigint REFERENCES residents (resident_id),
    -- The home's community path (from the resident, or set for a shared sensor).
    ADD COLUMN area_path ltree,
    ADD COLUMN position text CHECK (position IN ('waist', 'wrist', 'chest', 'pendant', 'home')),
    ADD COLUMN mqtt_password_hash text,
    ADD CONSTRAINT devices_type_check CHECK (device_type IN (
        'watch', 'pendant', 'belt', 'chest_band', 'home_gateway', 'door_sensor',
        'motion_sensor', 'bed_sensor', 'smoke_sensor', 'gas_sensor', 'water_sensor'));
CREATE INDEX devices_area_gist ON devices USING gist (area_path);
CREATE INDEX devices_resident_idx ON devices (resident_id);

CREATE TABLE staff_users (
    user_id        bigserial PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{2,64}$'),
    full_name      text NOT NULL,
    role           text NOT NULL CHECK (role IN ('dispatcher', 'supervisor', 'operator', 'admin')),
    -- The part of the network this user serves: a city, district, street or community path.
    scope_path     ltree NOT NULL,
    password_hash  text NOT NULL,
    phone          text,
    on_duty        boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz
);
CREATE INDEX staff_scope_gist ON staff_users USING gist (scope_path);

-- Keep residents.area_path and devices.area_path equal to their community's path.
CREATE FUNCTION carecall_resident_area() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT path INTO NEW.area_path FROM areas WHERE area_id = NEW.community_id;
    IF NEW.area_path IS NULL THEN
        RAISE EXCEPTION 'unknown community %', NEW.community_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF (SELECT level FROM areas WHERE area_id = NEW.community_id) <> 'community' THEN
        RAISE EXCEPTION 'area % is not a community', NEW.community_id USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER residents_area BEFORE INSERT OR UPDATE OF community_id ON residents
FOR EACH ROW EXECUTE FUNCTION carecall_resident_area();

CREATE FUNCTION carecall_device_area() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.resident_id IS NOT NULL THEN
        SELECT area_path INTO NEW.area_path FROM residents WHERE resident_id = NEW.resident_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_area BEFORE INSERT OR UPDATE OF resident_id ON devices
FOR EACH ROW EXECUTE FUNCTION carecall_device_area();

CREATE FUNCTION carecall_resident_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices SET area_path = NEW.area_path WHERE resident_id = NEW.resident_id;
    RETURN NULL;
END $$;
CREATE TRIGGER residents_moved AFTER UPDATE OF area_path ON residents
FOR EACH ROW WHEN (OLD.area_path IS DISTINCT FROM NEW.area_path)
EXECUTE FUNCTION carecall_resident_moved();

-- Append-only audit trail: who did what to which record, when, from where.
CREATE TABLE audit_log (
    audit_id     bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,            -- username, or 'system'
    actor_role   text,
    action       text NOT NULL,            -- read_resident, ack_incident, provision_device, ...
    record_type  text,
    record_id    text,
    scope_path   ltree,                    -- where the record lives (for supervisors' queries)
    source_ip    text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_scope_gist ON audit_log USING gist (scope_path);
CREATE INDEX audit_at_idx ON audit_log (at);

CREATE FUNCTION carecall_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION carecall_audit_append_only();
