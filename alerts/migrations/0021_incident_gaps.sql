-- Same event after close, unplaced incidents, coalesced list-read audit. See docs/alerts.md.

-- btree_gist lets one exclusion constraint mix "=" on text/integers with "&&" on ranges.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- "The same event" (docs/alerts.md, "One incident per episode"): a detection from the same
-- device, of the same kind, that either carries the same device sequence number (the same
-- message sent again, within a day) or whose event time is within the kind's tolerance of one
-- already recorded. Each source row carries both as ranges, and two exclusion constraints make
-- the second arrival conflict -- whether the first one's incident is open or long closed, and
-- on whichever connection or server it races. Rows from before this migration have NULLs and
-- take part only through their source key.
ALTER TABLE incident_sources
    ADD COLUMN device_id   text,
    ADD COLUMN kind        text,
    ADD COLUMN seq         bigint,
    -- [event - tolerance/2, event + tolerance/2): two spans overlap iff the events are closer
    -- than the tolerance. NULL: the kind has no tolerance (only the exact source key counts).
    ADD COLUMN event_span  tstzrange,
    -- [event - 12 h, event + 12 h) when the detection carries a sequence number.
    ADD COLUMN seq_span    tstzrange;

ALTER TABLE incident_sources ADD CONSTRAINT incident_sources_same_event
    EXCLUDE USING gist (device_id WITH =, kind WITH =, event_span WITH &&)
    WHERE (event_span IS NOT NULL);
ALTER TABLE incident_sources ADD CONSTRAINT incident_sources_same_message
    EXCLUDE USING gist (device_id WITH =, kind WITH =, seq WITH =, seq_span WITH &&)
    WHERE (seq IS NOT NULL);

-- Incidents of a device the registry does not place (area_path NULL) belong to no part of the
-- tree. They are shown to staff whose scope is the root of the area tree -- the one top-level
-- area, when there is exactly one -- and to admins (a role check done by the caller).
CREATE FUNCTION carecall_scope_is_root(scope ltree) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT nlevel(scope) = 1
       AND EXISTS (SELECT 1 FROM areas WHERE path = scope AND retired_at IS NULL)
       AND NOT EXISTS (SELECT 1 FROM areas
                       WHERE nlevel(path) = 1 AND retired_at IS NULL AND path <> scope)
$$;

-- Repeated identical list reads (a console refreshing its queue) are audited once per window:
-- the first read writes an audit_log row, the reads that follow within the window only count
-- here. "Identical" is the same user, action and key (the parameters and, for the incident
-- queue, the set of incidents returned). See alerts/audit.py.
CREATE TABLE audit_read_windows (
    actor         text NOT NULL,
    action        text NOT NULL,
    read_key      text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_s      double precision NOT NULL,
    reads         integer NOT NULL DEFAULT 1,
    last_at       timestamptz NOT NULL,
    PRIMARY KEY (actor, action, read_key, window_start)
);
CREATE INDEX audit_read_windows_start_idx ON audit_read_windows (window_start);
