-- Incidents: what a dispatcher acts on. One row per episode (a resident's fall, an SOS, a
-- device going offline), joined by every repeat detection while it is open. See docs/alerts.md.

-- Open states: raised (stored), delivered (on a screen), acknowledged, dispatched (help sent).
-- Closed states: resolved (with an outcome) or cancelled (the resident's "I am OK", or a
-- dispatcher with a reason).
CREATE TABLE incidents (
    incident_id        bigserial PRIMARY KEY,
    -- Who the episode is about: 'r:<resident_id>', or 'd:<device_id>' for a device fault or a
    -- device not (yet) assigned to a resident.
    episode_key        text NOT NULL,
    kind               text NOT NULL,
    severity           text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low', 'info')),
    -- 0 = critical .. 4 = info; queues order by it first, so a critical jumps every queue.
    priority           smallint NOT NULL,
    state              text NOT NULL DEFAULT 'raised' CHECK (state IN (
                           'raised', 'delivered', 'acknowledged', 'dispatched',
                           'resolved', 'cancelled')),
    resident_id        bigint REFERENCES residents (resident_id),
    device_id          text NOT NULL,
    -- The resident's community path (copied at open: scoped queries need no join). NULL only
    -- for a device the registry does not place; such incidents are visible to city scope.
    area_path          ltree,
    -- Routing: 0 = community, 1 = street, 2 = district, 3 = city (widened on escalation).
    route_level        smallint NOT NULL DEFAULT 0,
    routed_to          text[] NOT NULL DEFAULT '{}',
    detections         integer NOT NULL DEFAULT 1,
    -- The first detections' evidence (capped, see alerts/incidents.py), newest last.
    evidence           jsonb NOT NULL DEFAULT '[]'::jsonb,
    lat                double precision,
    lon                double precision,
    outcome            text CHECK (outcome IN ('real_emergency', 'false_alarm', 'resident_ok',
                                               'device_fault', 'recovered', 'duplicate',
                                               'test', 'cancelled_by_resident', 'other')),
    dispatched_to      text[] NOT NULL DEFAULT '{}',
    -- The trace: one stamp per hop (see docs/alerts.md, "Trace").
    event_at           timestamptz NOT NULL,      -- device clock: the press, the impact
    broker_at          timestamptz,               -- broker handed the message to the bridge
    handed_at          timestamptz,               -- the alert side took the reading
    detected_at        timestamptz NOT NULL,      -- the rule decided
    raised_at          timestamptz NOT NULL,      -- the incident row was written
    pushed_at          timestamptz,               -- first shown on a dispatcher's screen
    acknowledged_at    timestamptz,
    dispatched_at      timestamptz,
    resolved_at        timestamptz,               -- resolved or cancelled
    last_detection_at  timestamptz NOT NULL,
    acknowledged_by    text,
    closed_by          text
);

-- The rule "one open incident per episode", enforced where two racing writers cannot
-- both win. Writers use INSERT ... ON CONFLICT (episode_key, kind) WHERE <open> DO UPDATE.
CREATE UNIQUE INDEX incidents_one_open ON incidents (episode_key, kind)
    WHERE state IN ('raised', 'delivered', 'acknowledged', 'dispatched');
CREATE INDEX incidents_area_gist ON incidents USING gist (area_path);
CREATE INDEX incidents_queue_idx ON incidents (priority, raised_at)
    WHERE state IN ('raised', 'delivered', 'acknowledged', 'dispatched');
CREATE INDEX incidents_raised_idx ON incidents (raised_at);

-- Every detection that reached the incident layer, by a key that is stable across the live
-- lane, the rule runner and replays (an SOS: device + device time). A second arrival of the
-- same key is a no-op: this is what makes the pending-list replay and the live/rule double
-- path idempotent.
CREATE TABLE incident_sources (
    source_key   text PRIMARY KEY,
    incident_id  bigint REFERENCES incidents (incident_id),
    seen_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incident_sources_incident_idx ON incident_sources (incident_id);

-- Every transition and action, with who and when. Append-only like the audit log.
CREATE TABLE incident_events (
    event_id     bigserial PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents (incident_id),
    at           timestamptz NOT NULL,
    actor        text NOT NULL,             -- username, 'system', 'resident', 'gateway'
    action       text NOT NULL,             -- opened, joined, delivered, acknowledged, ...
    from_state   text,
    to_state     text,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX incident_events_incident_idx ON incident_events (incident_id, event_id);

CREATE FUNCTION carecall_incident_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'incident_events is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER incident_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON incident_events
FOR EACH STATEMENT EXECUTE FUNCTION carecall_incident_events_append_only();

-- Fan-out to every server's WebSocket hub: one small notification per event. The payload
-- carries the area path so a hub can scope it without a query.
CREATE FUNCTION carecall_incident_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    inc incidents%ROWTYPE;
BEGIN
    SELECT * INTO inc FROM incidents WHERE incident_id = NEW.incident_id;
    PERFORM pg_notify('carecall_incidents', json_build_object(
        'event_id', NEW.event_id, 'incident_id', NEW.incident_id, 'action', NEW.action,
        'actor', NEW.actor, 'at', extract(epoch FROM NEW.at), 'state', inc.state,
        'kind', inc.kind, 'severity', inc.severity, 'area_path', inc.area_path::text,
        'resident_id', inc.resident_id, 'device_id', inc.device_id,
        'detections', inc.detections, 'routed_to', inc.routed_to,
        'event_at', extract(epoch FROM inc.event_at))::text);
    RETURN NULL;
END $$;
CREATE TRIGGER incident_events_notify AFTER INSERT ON incident_events
FOR EACH ROW EXECUTE FUNCTION carecall_incident_event_notify();

-- Timers (escalation steps, contact call timeouts) are rows with a due time: a loop takes
-- the due ones with FOR UPDATE SKIP LOCKED, so a restart or a second server loses nothing
-- and no timer fires twice.
CREATE TABLE incident_timers (
    timer_id     bigserial PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents (incident_id),
    kind         text NOT NULL CHECK (kind IN ('ack_t1', 'ack_t2', 'contact')),
    due_at       timestamptz NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb,
    done_at      timestamptz
);
CREATE INDEX incident_timers_due_idx ON incident_timers (due_at) WHERE done_at IS NULL;
CREATE UNIQUE INDEX incident_timers_one_pending ON incident_timers (incident_id, kind)
    WHERE done_at IS NULL;

-- Calls to the resident's contacts, in priority order, until one accepts.
CREATE TABLE incident_calls (
    call_id      bigserial PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incidents (incident_id),
    contact_id   bigint REFERENCES contacts (contact_id),
    role         text NOT NULL,
    phone        text NOT NULL,
    attempt      smallint NOT NULL,
    state        text NOT NULL DEFAULT 'calling'
                 CHECK (state IN ('calling', 'accepted', 'declined', 'no_answer')),
    called_at    timestamptz NOT NULL,
    answered_at  timestamptz
);
CREATE INDEX incident_calls_incident_idx ON incident_calls (incident_id);

-- Escalation policy as data: per routing level and severity, T1 (not acknowledged: re-notify
-- and widen to the next level) and T2 (critical only: page the supervisor), and how long a
-- contact's phone may ring before the next contact is called.
CREATE TABLE escalation_policy (
    level             text NOT NULL CHECK (level IN ('community', 'street', 'district', 'city')),
    severity          text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low', 'info')),
    t1_s              double precision NOT NULL CHECK (t1_s > 0),
    t2_s              double precision CHECK (t2_s > 0),
    call_contacts     boolean NOT NULL DEFAULT false,
    contact_ring_s    double precision NOT NULL DEFAULT 60 CHECK (contact_ring_s > 0),
    PRIMARY KEY (level, severity)
);
INSERT INTO escalation_policy (level, severity, t1_s, t2_s, call_contacts, contact_ring_s)
SELECT l.level, s.severity, s.t1_s * l.factor, s.t2_s, s.call_contacts, 45
FROM (VALUES ('community', 1.0), ('street', 1.0), ('district', 1.0), ('city', 2.0))
         AS l(level, factor),
     (VALUES ('critical', 30.0, 120.0, true),
             ('high', 120.0, NULL, true),
             ('medium', 600.0, NULL, false),
             ('low', 3600.0, NULL, false),
             ('info', 86400.0, NULL, false)) AS s(severity, t1_s, t2_s, call_contacts);

-- Maintenance windows: a device (or every device of a community/street/...) is being worked
-- on; its detections are recorded as suppressed, not raised.
CREATE TABLE maintenance_windows (
    window_id    bigserial PRIMARY KEY,
    device_id    text,
    area_path    ltree,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    reason       text NOT NULL DEFAULT '',
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((device_id IS NULL) <> (area_path IS NULL)),
    CHECK (ends_at > starts_at)
);
CREATE INDEX maintenance_windows_area_gist ON maintenance_windows USING gist (area_path);
CREATE INDEX maintenance_windows_device_idx ON maintenance_windows (device_id);

-- Detections that were deliberately not raised: visible and countable, never silent.
CREATE TABLE suppressed_detections (
    suppressed_id  bigserial PRIMARY KEY,
    at             timestamptz NOT NULL,
    device_id      text NOT NULL,
    resident_id    bigint,
    area_path      ltree,
    kind           text NOT NULL,
    severity       text NOT NULL,
    reason         text NOT NULL,     -- maintenance, device_offline
    window_id      bigint REFERENCES maintenance_windows (window_id),
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX suppressed_area_gist ON suppressed_detections USING gist (area_path);
CREATE INDEX suppressed_at_idx ON suppressed_detections (at);
