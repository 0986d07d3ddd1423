-- Readings: one table per kind of data, each with device time, receive time, device id and
-- sequence. (device_id, device_time, seq) is the idempotency key; TimescaleDB requires the time
-- column in every unique index, and native partitioning requires the partition key in it.
-- Its order also serves "this device's readings over a time range", so no second index is
-- needed (each extra index costs about a quarter of the insert rate: docs/ingest.md).
--
-- Marked blocks are applied by the migration runner for one storage mode only:
--   /*native: ... */     plain PostgreSQL: declarative range partitions by day
--   /*timescale: ... */  TimescaleDB present: hypertables, compression, continuous aggregate

CREATE TABLE vitals (
    device_id          text        NOT NULL,
    seq                bigint      NOT NULL,
    device_time        timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    hr_bpm             real,
    spo2_pct           real,
    temp_c             real,
    resp_rate_per_min  real,
    sbp_mmhg           real,
    dbp_mmhg           real,
    battery_pct        real,
    signal_quality     real,
    on_oxygen          boolean,
    UNIQUE (device_id, device_time, seq)
) /*native: PARTITION BY RANGE (device_time)*/;

-- One row per window, not per sample: samples are little-endian float32 x,y,z in g.
CREATE TABLE accel_windows (
    device_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    rate_hz      real        NOT NULL,
    n_samples    integer     NOT NULL,
    peak_g       real        NOT NULL,
    position     text,
    samples      bytea       NOT NULL,
    UNIQUE (device_id, device_time, seq)
) /*native: PARTITION BY RANGE (device_time)*/;

CREATE TABLE sos_presses (
    device_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    action       text        NOT NULL,
    lat          double precision,
    lon          double precision,
    accuracy_m   real,
    UNIQUE (device_id, device_time, seq)
) /*native: PARTITION BY RANGE (device_time)*/;

CREATE TABLE home_events (
    device_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    sensor       text        NOT NULL,
    state        text        NOT NULL,
    sensor_id    text,
    UNIQUE (device_id, device_time, seq)
) /*native: PARTITION BY RANGE (device_time)*/;

CREATE TABLE device_status (
    device_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    state        text        NOT NULL,
    battery_pct  real,
    rssi_dbm     real,
    firmware     text,
    will         boolean     NOT NULL DEFAULT false,
    UNIQUE (device_id, device_time, seq)
) /*native: PARTITION BY RANGE (device_time)*/;

/*native:
CREATE TABLE vitals_default PARTITION OF vitals DEFAULT;
CREATE TABLE accel_windows_default PARTITION OF accel_windows DEFAULT;
CREATE TABLE sos_presses_default PARTITION OF sos_presses DEFAULT;
CREATE TABLE home_events_default PARTITION OF home_events DEFAULT;
CREATE TABLE device_status_default PARTITION OF device_status DEFAULT;
*/

/*timescale:
SELECT create_hypertable('vitals', 'device_time', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('accel_windows', 'device_time', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('sos_presses', 'device_time', chunk_time_interval => INTERVAL '7 days');
SELECT create_hypertable('home_events', 'device_time', chunk_time_interval => INTERVAL '1 day');
SELECT create_hypertable('device_status', 'device_time', chunk_time_interval => INTERVAL '1 day');
ALTER TABLE vitals SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                        timescaledb.compress_orderby = 'device_time DESC, seq DESC');
ALTER TABLE accel_windows SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                               timescaledb.compress_orderby = 'device_time DESC, seq DESC');
ALTER TABLE home_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                             timescaledb.compress_orderby = 'device_time DESC, seq DESC');
ALTER TABLE device_status SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                               timescaledb.compress_orderby = 'device_time DESC, seq DESC');
*/

-- Everything that was refused: raw bytes (capped), topic, reason, when. ``dl_key`` makes a
-- spool replay of the same rejection idempotent.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,
    dl_key         bytea       NOT NULL UNIQUE,
    received_at    timestamptz NOT NULL,
    topic          text        NOT NULL,
    device_id      text,
    seq            bigint,
    reason         text        NOT NULL,
    detail         text        NOT NULL,
    payload        bytea       NOT NULL,
    payload_bytes  integer     NOT NULL
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at);
CREATE INDEX dead_letters_device_idx ON dead_letters (device_id, received_at DESC);

-- Vitals per device per minute. Same name and columns on both paths, so queries do not care.
/*native:
CREATE TABLE vitals_1m (
    bucket      timestamptz      NOT NULL,
    device_id   text             NOT NULL,
    n           bigint           NOT NULL,
    hr_avg      double precision,
    hr_min      real,
    hr_max      real,
    spo2_avg    double precision,
    spo2_min    real,
    temp_avg    double precision,
    temp_max    real,
    rr_avg      double precision,
    sbp_avg     double precision,
    dbp_avg     double precision,
    PRIMARY KEY (device_id, bucket)
);
*/
/*timescale:
CREATE MATERIALIZED VIEW vitals_1m WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 minute', device_time) AS bucket,
       device_id,
       count(*)                AS n,
       avg(hr_bpm)             AS hr_avg,
       min(hr_bpm)             AS hr_min,
       max(hr_bpm)             AS hr_max,
       avg(spo2_pct)           AS spo2_avg,
       min(spo2_pct)           AS spo2_min,
       avg(temp_c)             AS temp_avg,
       max(temp_c)             AS temp_max,
       avg(resp_rate_per_min)  AS rr_avg,
       avg(sbp_mmhg)           AS sbp_avg,
       avg(dbp_mmhg)           AS dbp_avg
FROM vitals
GROUP BY bucket, device_id
WITH NO DATA;
SELECT add_continuous_aggregate_policy('vitals_1m',
    start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
*/
