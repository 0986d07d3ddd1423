// Function-node body: batch parsed vitals and insert them with one statement per batch
// (unnest arrays, ON CONFLICT DO NOTHING: the same idempotent write CareCall does). Flushes at
// 1000 rows or after 5 ms, like CareCall's defaults.
const pg = global.get("pg");
let state = context.get("state");
if (!state) {
  state = { rows: [], timer: null, pool: new pg.Pool({ connectionString: global.get("peerDbUrl"), max: 2 }) };
  context.set("state", state);
}
const flush = () => {
  if (state.timer) { clearTimeout(state.timer); state.timer = null; }
  const rows = state.rows;
  if (!rows.length) return;
  state.rows = [];
  const cols = [[], [], [], [], [], [], []];
  for (const r of rows) r.forEach((v, i) => cols[i].push(v));
  state.pool.query(
    "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm, spo2_pct, temp_c) " +
    "SELECT d, s, to_timestamp(t), to_timestamp(rt), h, o, c FROM unnest($1::text[], $2::int8[], " +
    "$3::float8[], $4::float8[], $5::float4[], $6::float4[], $7::float4[]) AS u(d, s, t, rt, h, o, c) " +
    "ON CONFLICT DO NOTHING", cols).catch((e) => node.error(e.message));
};
const p = msg.payload;
const parts = msg.topic.split("/");
const device = parts[parts.length - 2];
state.rows.push([device, p.seq, p.ts, Date.now() / 1000, p.hr_bpm, p.spo2_pct, p.temp_c]);
if (state.rows.length >= 1000) flush();
else if (!state.timer) state.timer = setTimeout(flush, 5);
return null;
