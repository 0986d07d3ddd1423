// The dispatcher console: the live incident queue of the signed-in dispatcher's part of the
// network, the alarm that cannot be missed, and the incident view with its actions.
//
// Data: GET /api/v1/incidents (the queue), GET /api/v1/incidents/{id} (the view), the action
// POSTs, GET /api/v1/kpis, and the WebSocket /api/v1/ws which pushes "live_alarm" (an SOS,
// smoke or gas reading before it is even stored) and "incident_event" (any change), and on
// which the page says which waiting incidents it shows ("shown"). The server scopes
// everything; this page never filters for access, only for display.

import {
  $,
  api,
  applyI18n,
  fmtAge,
  fmtNumber,
  fmtPct,
  fmtSeconds,
  fmtTime,
  h,
  keepSignedIn,
  logout,
  onLangChange,
  s,
  setupLangSwitch,
  signIn,
  t,
  token,
  tOr,
} from "./common.js";

const SEVERITY_RANK = { critical: 0, high: 1, medium: 2, low: 3, info: 4 };
const NEEDS_ACK = new Set(["raised", "delivered"]);
const OPEN = new Set(["raised", "delivered", "acknowledged", "dispatched"]);
// The server's call order (alerts/escalation.py): role first, then the contact's priority.
const ROLE_ORDER = { family: 0, community_helper: 1, grid_worker: 2 };
const HELP = ["family", "community_helper", "grid_worker", "ambulance_120", "police_110",
  "fire_119", "doctor"];
const OUTCOMES = ["real_emergency", "false_alarm", "resident_ok", "device_fault", "recovered",
  "duplicate", "test", "other"];
const LEVELS = ["city", "district", "street", "community"];

const state = {
  me: null,
  incidents: new Map(), // incident_id -> queue row
  provisional: new Map(), // source_key -> live alarm not yet matched by an incident
  seen: new Set(), // incident ids already announced
  firstLoad: true,
  selected: null, // "i:<id>" or "p:<source_key>"
  detail: null,
};

// -- the queue -----------------------------------------------------------------------------

function epoch(iso) {
  return new Date(iso).getTime() / 1000;
}

/** Queue entries in display order: severity, then waiting for an acknowledgement, then newest. */
function entries() {
  const list = [];
  for (const p of state.provisional.values()) {
    list.push({ key: `p:${p.source_key}`, provisional: true, kind: p.incident_kind,
      severity: p.severity, state: "raised", since: p.event_ts, who: p.device_id, row: p });
  }
  for (const r of state.incidents.values()) {
    list.push({ key: `i:${r.incident_id}`, provisional: false, kind: r.kind, severity: r.severity,
      state: r.state, since: epoch(r.raised_at), who: r.resident_name || r.device_id, row: r });
  }
  list.sort((a, b) =>
    (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9)
    || Number(NEEDS_ACK.has(b.state)) - Number(NEEDS_ACK.has(a.state))
    || b.since - a.since);
  return list;
}

function urgent(e) {
  return e.severity === "critical" && NEEDS_ACK.has(e.state);
}

function renderQueue() {
  const list = entries();
  const ol = $("#queue");
  const hadFocus = ol.contains(document.activeElement);
  ol.replaceChildren(...list.map((e) => {
    const btn = h("button", {
      type: "button",
      class: `inc sev-${e.severity}${urgent(e) ? " urgent" : ""}${e.provisional ? " provisional" : ""}`,
      "aria-current": e.key === state.selected ? "true" : false,
      dataset: { key: e.key },
      onclick: () => select(e.key, true),
      onfocus: () => select(e.key, false),
    },
    h("span", { class: "sev" }, t(`severity.${e.severity}`)),
    h("span", { class: "kind" }, t(`kind.${e.kind}`)),
    h("span", { class: "who" }, e.who),
    h("span", { class: "state" }, e.provisional ? t("console.provisional") : t(`state.${e.state}`)),
    h("span", { class: "age", dataset: { since: e.since } }, fmtAge(Date.now() / 1000 - e.since)));
    return h("li", {}, btn);
  }));
  $("#queue-empty").hidden = list.length > 0;
  $("#queue-count").textContent = t("console.queue_count", { n: list.length });
  if (hadFocus) focusSelected();
  renderAlarm(list.filter(urgent));
}

function focusSelected() {
  const btn = state.selected && $(`#queue button[data-key="${CSS.escape(state.selected)}"]`);
  if (btn) btn.focus();
}

function move(step) {
  const keys = entries().map((e) => e.key);
  if (!keys.length) return;
  const i = keys.indexOf(state.selected);
  const next = i < 0 ? 0 : Math.min(keys.length - 1, Math.max(0, i + step));
  select(keys[next], false);
  focusSelected();
}

let detailTimer = null;
function select(key, openNow) {
  if (state.selected !== key) {
    state.selected = key;
    for (const b of document.querySelectorAll("#queue button")) {
      if (b.dataset.key === key) b.setAttribute("aria-current", "true");
      else b.removeAttribute("aria-current");
    }
    // Holding j/k skims the queue: load the view once the selection rests.
    clearTimeout(detailTimer);
    detailTimer = setTimeout(loadDetail, openNow ? 0 : 150);
  }
}

let refreshing = null;
let refreshAgain = false;
/** Re-read the queue; calls made while one is in flight collapse into one more. */
async function refreshQueue() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    try {
      do {
        refreshAgain = false;
        const rows = await api("/api/v1/incidents");
        state.incidents = new Map(rows.map((r) => [r.incident_id, r]));
        for (const [k, p] of state.provisional) {
          const match = rows.find((r) => r.device_id === p.device_id && r.kind === p.incident_kind);
          if (match) {
            state.provisional.delete(k);
            state.seen.add(match.incident_id); // already announced as it arrived
          }
        }
        announceNew(rows);
        renderQueue();
        confirmShown();
      } while (refreshAgain);
    } catch (err) {
      console.warn("queue refresh failed", err);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// Incidents this connection has told the server it shows (reset on every new connection).
const confirmed = new Set();
/**
 * Tell the server which incidents still waiting to be seen are now on this screen: the first
 * dispatcher's screen that shows one marks it "delivered" (also when this console connected,
 * reconnected or re-read its queue after the incident was raised). A hidden tab is not a
 * screen: it confirms when it becomes visible.
 */
function confirmShown() {
  if (!ws.sock || ws.sock.readyState !== WebSocket.OPEN) return;
  if (document.visibilityState !== "visible") return;
  const ids = [...state.incidents.values()]
    .filter((r) => r.state === "raised" && !confirmed.has(r.incident_id))
    .map((r) => r.incident_id);
  if (ids.length === 0) return;
  for (const id of ids) confirmed.add(id);
  ws.sock.send(JSON.stringify({ type: "shown", incident_ids: ids }));
}

function announceNew(rows) {
  for (const r of rows) {
    if (state.seen.has(r.incident_id)) continue;
    state.seen.add(r.incident_id);
    if (!state.firstLoad) announce(r.kind, r.severity, r.resident_name || r.device_id);
  }
  state.firstLoad = false;
}

function announce(kind, severity, who) {
  const key = severity === "critical" ? "console.alarm_new" : "console.new_incident";
  // Clear first so the same text twice is still read out.
  $("#announce").textContent = "";
  setTimeout(() => {
    $("#announce").textContent = t(key, { kind: t(`kind.${kind}`), who });
  }, 50);
}

// -- the alarm -----------------------------------------------------------------------------

function renderAlarm(list) {
  $("#alarm").hidden = list.length === 0;
  document.body.classList.toggle("alarming", list.length > 0);
  $("#alarm-list").replaceChildren(...list.map((e) => h("li", {},
    h("strong", {}, t(`kind.${e.kind}`)), " · ", e.who, " · ",
    h("span", { class: "age", dataset: { since: e.since } }, fmtAge(Date.now() / 1000 - e.since)),
    e.provisional ? null : h("button", {
      type: "button", class: "primary",
      onclick: () => act("acknowledge", e.row.incident_id),
    }, t("action.acknowledge")))));
  sound.set(list.length > 0);
}

// A WebAudio beep made in the page: nothing to fetch, nothing a blocked download can break.
const sound = {
  ctx: null,
  timer: null,
  wanted: false,
  unlock() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") this.ctx.resume();
    this.update();
  },
  set(on) {
    this.wanted = on;
    if (on && !this.timer) {
      this.beep();
      this.timer = setInterval(() => this.beep(), 2000);
    } else if (!on && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
    this.update();
  },
  update() {
    // Browsers start audio only after a user gesture; say so rather than stay silent.
    const running = Boolean(this.ctx && this.ctx.state === "running");
    $("#sound").hidden = !this.wanted || running;
    document.body.dataset.alarmSound = !this.wanted ? "off" : running ? "playing" : "locked";
  },
  beep() {
    const ctx = this.ctx;
    if (!ctx || ctx.state !== "running") return;
    for (const [i, freq] of [880, 660, 880].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      const at = ctx.currentTime + i * 0.2;
      osc.frequency.value = freq;
      osc.type = "square";
      gain.gain.setValueAtTime(0.0001, at);
      gain.gain.exponentialRampToValueAtTime(0.2, at + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(at);
      osc.stop(at + 0.18);
    }
  },
};

// -- the incident view --------------------------------------------------------------------------

async function loadDetail() {
  const key = state.selected;
  if (!key) return;
  if (key.startsWith("p:")) {
    state.detail = null;
    renderProvisional(state.provisional.get(key.slice(2)));
    return;
  }
  try {
    const detail = await api(`/api/v1/incidents/${key.slice(2)}`);
    if (state.selected === key) {
      state.detail = detail;
      renderDetail();
    }
  } catch (err) {
    if (err.status === 404) {
      state.incidents.delete(Number(key.slice(2)));
      renderQueue();
    }
  }
}

function renderProvisional(p) {
  if (!p) return;
  $("#detail-h").textContent = `${t(`kind.${p.incident_kind}`)} · ${p.device_id}`;
  $("#detail-body").replaceChildren(
    h("p", { class: "muted" }, t("console.provisional"), " · ",
      t("console.since_raised", { age: fmtAge(Date.now() / 1000 - p.event_ts) })),
    p.lat != null ? section("detail.location", mapSvg({ lat: p.lat, lon: p.lon,
      source: "incident" }, null)) : null);
}

function section(titleKey, ...content) {
  return h("section", { class: "card" }, h("h3", {}, t(titleKey)), ...content);
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, t(k)), h("dd", {}, v)]));
}

function renderDetail() {
  const d = state.detail;
  const inc = d.incident;
  const r = d.resident;
  $("#detail-h").textContent =
    `${t(`kind.${inc.kind}`)} · ${r ? r.full_name : inc.device_id}`;
  const open = OPEN.has(inc.state);
  const actions = h("div", { class: "actions", role: "group" },
    actionButton("acknowledge", "a", open && NEEDS_ACK.has(inc.state)),
    actionButton("dispatch", "d", inc.state === "acknowledged" || inc.state === "dispatched"),
    actionButton("note", "n", open),
    actionButton("resolve", "r", open));
  const status = h("p", { class: "status" },
    h("span", { class: `badge sev-${inc.severity}` }, t(`severity.${inc.severity}`)), " ",
    h("span", { class: "badge" }, t(`state.${inc.state}`)), " ",
    h("span", { class: "age", dataset: { since: epoch(inc.raised_at) } },
      fmtAge(Date.now() / 1000 - epoch(inc.raised_at))),
    " · ", t("detail.detections", { n: inc.detections }),
    inc.acknowledged_by ? [" · ", t("detail.ack_by", { who: inc.acknowledged_by })] : null,
    inc.dispatched_to?.length ? [" · ", t("detail.dispatched_to",
      { who: inc.dispatched_to.map((x) => t(`help.${x}`)).join(", ") })] : null);
  $("#detail-body").replaceChildren(
    status, actions,
    h("div", { class: "cards" },
      residentCard(inc, r),
      contactsCard(d.contacts, d.calls),
      vitalsCard(d.vitals),
      evidenceCard(inc.evidence),
      section("detail.location", d.location ? mapSvg(d.location, r) : h("p", { class: "muted" },
        t("detail.no_location"))),
      section("detail.trace", traceList(d.trace)),
      section("detail.events", eventsList(d.events))));
}

function actionButton(action, key, enabled) {
  return h("button", {
    type: "button",
    class: action === "acknowledge" ? "primary" : "",
    disabled: !enabled,
    "aria-keyshortcuts": key,
    onclick: () => startAction(action),
  }, t(`action.${action}`), " ", h("kbd", { "aria-hidden": "true" }, key));
}

function residentCard(inc, r) {
  if (!r) {
    return section("detail.resident", h("p", { class: "muted" }, t("detail.no_resident")),
      kv([["detail.device", inc.device_id], ["detail.area", inc.area_path]]));
  }
  const age = r.birth_year ? new Date().getFullYear() - r.birth_year : null;
  return section("detail.resident", kv([
    ["detail.name", r.full_name],
    ["detail.age", age],
    ["detail.sex", r.sex ? tOr(`sex.${r.sex}`, r.sex) : null],
    ["detail.address", r.address],
    ["detail.phone", r.phone],
    ["detail.device", inc.device_id],
    ["detail.area", r.area_path],
  ]), r.medical_notes ? h("div", { class: "medical" }, h("strong", {}, t("detail.medical")),
    h("p", {}, r.medical_notes)) : null);
}

function contactsCard(contacts, calls) {
  if (!contacts.length) return section("detail.contacts", h("p", { class: "muted" },
    t("detail.no_contacts")));
  const lastCall = new Map();
  for (const c of calls) lastCall.set(c.phone, c); // calls come oldest first
  const ordered = [...contacts].sort((a, b) =>
    (ROLE_ORDER[a.role] ?? 3) - (ROLE_ORDER[b.role] ?? 3) || a.priority - b.priority);
  return section("detail.contacts", h("ol", { class: "contacts" }, ordered.map((c) => {
    const call = lastCall.get(c.phone);
    const st = call ? call.state : "not_called";
    return h("li", {},
      h("span", { class: "name" }, c.name), " ",
      h("span", { class: "muted" }, t(`role.${c.role}`)), " ",
      h("a", { href: `tel:${c.phone}` }, c.phone), " ",
      h("span", { class: `badge call-${st}` }, t(`call.${st}`)));
  })));
}

function vitalsCard(v) {
  const last = v?.last;
  if (!last) return section("detail.vitals", h("p", { class: "muted" }, t("detail.no_vitals")));
  const bp = last.sbp_mmhg ? `${last.sbp_mmhg}/${last.dbp_mmhg ?? "?"} mmHg` : null;
  return section("detail.vitals",
    h("p", { class: "muted" }, t("detail.vitals_last", { at: fmtTime(last.device_time) })),
    kv([
      ["vital.hr_bpm", last.hr_bpm != null ? `${fmtNumber(last.hr_bpm)} bpm` : null],
      ["vital.spo2_pct", last.spo2_pct != null ? `${fmtNumber(last.spo2_pct)} %` : null],
      ["vital.temp_c", last.temp_c != null ? `${fmtNumber(last.temp_c, 1)} °C` : null],
      ["vital.resp_rate_per_min", last.resp_rate_per_min != null
        ? `${fmtNumber(last.resp_rate_per_min)} /min` : null],
      ["vital.bp", bp],
      ["vital.battery_pct", last.battery_pct != null ? `${fmtNumber(last.battery_pct)} %` : null],
    ]),
    vitalsChart(v.per_minute));
}

/** Heart rate (left scale) and SpO2 (right scale) per minute over the last hour. */
function vitalsChart(rows) {
  const W = 360, H = 130, L = 34, R = 34, T = 8, B = 20;
  const now = Date.now() / 1000;
  const x = (ts) => L + ((ts - (now - 3600)) / 3600) * (W - L - R);
  const yHr = (v) => T + (1 - (v - 40) / 120) * (H - T - B); // 40..160 bpm
  const ySpo2 = (v) => T + (1 - (v - 80) / 20) * (H - T - B); // 80..100 %
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": t("detail.vitals_chart") }, s("title", {}, t("detail.vitals_chart")));
  for (const v of [60, 100, 140]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: yHr(v), y2: yHr(v), class: "grid" }),
      s("text", { x: L - 4, y: yHr(v) + 4, class: "tick hr", "text-anchor": "end" }, v));
  }
  for (const v of [90, 95, 100]) {
    svg.append(s("text", { x: W - R + 4, y: ySpo2(v) + 4, class: "tick spo2" }, `${v}%`));
  }
  for (const [m, label] of [[60, "-60′"], [30, "-30′"], [0, "0"]]) {
    svg.append(s("text", { x: x(now - m * 60), y: H - 4, class: "tick", "text-anchor": "middle" },
      label));
  }
  const pts = [...rows].map((r) => ({ ts: epoch(r.bucket), hr: r.hr_avg, spo2: r.spo2_avg }))
    .sort((a, b) => a.ts - b.ts);
  const line = (key, y, cls) => {
    const p = pts.filter((q) => q[key] != null);
    if (!p.length) return;
    svg.append(s("polyline", { class: `line ${cls}`,
      points: p.map((q) => `${x(q.ts).toFixed(1)},${y(q[key]).toFixed(1)}`).join(" ") }));
    const lastP = p[p.length - 1];
    svg.append(s("circle", { cx: x(lastP.ts), cy: y(lastP[key]), r: 2.5, class: `dot ${cls}` }));
  };
  line("hr", yHr, "hr");
  line("spo2", ySpo2, "spo2");
  return h("figure", { class: "chart-fig" }, svg,
    h("figcaption", {}, h("span", { class: "key hr" }, t("vital.hr_bpm")), " ",
      h("span", { class: "key spo2" }, t("vital.spo2_pct"))));
}

function evidenceCard(evidence) {
  const items = (evidence || []).slice(-5).reverse();
  if (!items.length) return section("detail.evidence", h("p", { class: "muted" },
    t("detail.no_evidence")));
  return section("detail.evidence", h("ul", { class: "evidence" }, items.map((e) => h("li", {},
    h("strong", {}, t(`kind.${e.kind}`)), e.event_ts ? ` · ${fmtTime(e.event_ts)}` : "",
    h("dl", { class: "kv small" }, Object.entries(e)
      .filter(([k, v]) => !["kind", "event_ts"].includes(k) && v !== null && typeof v !== "object")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, evidenceValue(k, v))]))))));
}

function evidenceValue(key, v) {
  // Detector evidence names its units; "*_ts" fields are epoch seconds.
  if (typeof v !== "number") return String(v);
  if (key.endsWith("_ts")) return fmtTime(v);
  return String(Math.round(v * 1e4) / 1e4);
}

/**
 * An offline map: the position plotted in metres around the resident's home (or around the
 * position itself), with distance rings and a scale bar. No tiles, so it works with no
 * internet and leaks no location to a map provider.
 */
function mapSvg(loc, resident) {
  const SIZE = 240, C = SIZE / 2;
  const home = resident && resident.home_lat != null
    ? { lat: resident.home_lat, lon: resident.home_lon } : null;
  const origin = home || loc;
  const mPerDegLat = 110540;
  const mPerDegLon = 111320 * Math.cos((origin.lat * Math.PI) / 180);
  const dx = (loc.lon - origin.lon) * mPerDegLon;
  const dy = (loc.lat - origin.lat) * mPerDegLat;
  const dist = Math.hypot(dx, dy);
  // A round radius that holds the point and its accuracy circle with some margin.
  const need = Math.max(50, dist * 1.25, (loc.accuracy_m || 0) * 1.1);
  const radius = [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
    .find((r) => r >= need) || need;
  const px = (C - 16) / radius;
  const svg = s("svg", { class: "map", viewBox: `0 0 ${SIZE} ${SIZE}`, role: "img",
    "aria-label": t("detail.map_label") }, s("title", {}, t("detail.map_label")));
  svg.append(s("rect", { x: 0, y: 0, width: SIZE, height: SIZE, class: "map-bg" }));
  for (const f of [0.5, 1]) {
    svg.append(s("circle", { cx: C, cy: C, r: radius * f * px, class: "ring" }));
  }
  svg.append(s("line", { x1: C, y1: 8, x2: C, y2: SIZE - 8, class: "grid" }),
    s("line", { x1: 8, y1: C, x2: SIZE - 8, y2: C, class: "grid" }),
    s("text", { x: C + 4, y: 16, class: "tick" }, "N ↑"));
  if (home) {
    svg.append(s("rect", { x: C - 5, y: C - 5, width: 10, height: 10, class: "home" }),
      s("text", { x: C + 8, y: C + 14, class: "tick" }, t("detail.map_home")));
  }
  const ix = C + dx * px;
  const iy = C - dy * px;
  if (loc.accuracy_m) {
    svg.append(s("circle", { cx: ix, cy: iy, r: Math.max(3, loc.accuracy_m * px), class: "acc" }));
  }
  svg.append(s("circle", { cx: ix, cy: iy, r: 5, class: "here" }));
  // Scale bar: half the radius, labelled in metres or kilometres.
  const bar = radius / 2;
  const barLabel = bar >= 1000 ? `${bar / 1000} km` : `${bar} m`;
  svg.append(s("line", { x1: 10, y1: SIZE - 12, x2: 10 + bar * px, y2: SIZE - 12, class: "scale" }),
    s("text", { x: 10, y: SIZE - 18, class: "tick" }, barLabel));
  return h("figure", { class: "map-fig" }, svg, h("figcaption", {},
    t("detail.map_source", { source: t(`source.${loc.source}`) }),
    ` · ${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}`,
    home ? ` · ${Math.round(dist)} m` : ""));
}

/** Each hop of the trace with its time since the device's event and a log-scaled bar. */
function traceList(trace) {
  const done = trace.filter((x) => x.at !== null);
  const maxS = Math.max(0.001, ...done.map((x) => x.since_event_s));
  // Negative when the device's clock runs ahead of the server's: no bar, the sign says it.
  const scale = (sec) => Math.log10(1 + Math.max(0, sec) * 1000) / Math.log10(1 + maxS * 1000);
  return h("ol", { class: "trace", "aria-label": t("detail.trace_label") },
    trace.map((x, i) => {
      const prev = trace.slice(0, i).reverse().find((p) => p.at !== null);
      const delta = x.at !== null && prev ? x.since_event_s - prev.since_event_s : null;
      return h("li", { class: x.at === null ? "pending" : "" },
        h("span", { class: "hop" }, t(`hop.${x.hop}`)),
        s("svg", { class: "tbar", viewBox: "0 0 100 8", preserveAspectRatio: "none",
          "aria-hidden": "true" },
        x.at === null ? null : s("rect", { x: 0, y: 1, height: 6,
          width: Math.max(1, scale(x.since_event_s) * 100) })),
        h("span", { class: "t" }, x.at === null ? t("common.none")
          : `${x.since_event_s < 0 ? "" : "+"}${fmtSeconds(x.since_event_s)}`),
        h("span", { class: "muted" }, delta === null ? "" : `Δ ${fmtSeconds(delta)}`));
    }));
}

function eventsList(events) {
  return h("ol", { class: "events" }, [...events].reverse().slice(0, 30).map((e) => h("li", {},
    h("time", {}, fmtTime(e.at)), " ", h("strong", {}, e.actor), " ", tOr(`event.${e.action}`, e.action),
    e.detail?.text ? [": ", h("q", {}, e.detail.text)] : null,
    e.detail?.help ? [": ", e.detail.help.map((x) => t(`help.${x}`)).join(", ")] : null,
    e.detail?.outcome ? [": ", t(`outcome.${e.detail.outcome}`)] : null)));
}

// -- actions ---------------------------------------------------------------------------------

function selectedIncident() {
  return state.selected?.startsWith("i:") ? state.incidents.get(Number(state.selected.slice(2)))
    : null;
}

function startAction(action) {
  const inc = selectedIncident();
  if (!inc) return;
  if (action === "acknowledge") {
    act("acknowledge", inc.incident_id);
    return;
  }
  const dlg = $(`#${action}-dlg`);
  const form = $("form", dlg);
  form.reset();
  $(".form-error", dlg).textContent = "";
  dlg.dataset.incident = inc.incident_id;
  dlg.showModal();
}

async function act(action, incidentId, body) {
  const path = action === "note" ? "notes" : action;
  try {
    await api(`/api/v1/incidents/${incidentId}/${path}`, { method: "POST", body });
    toast(t("action.done", { action: t(`action.${action}`) }));
    await refreshQueue();
    if (state.selected === `i:${incidentId}`) await loadDetail();
    return null;
  } catch (err) {
    const msg = t("action.failed", { detail: err.detail || err.message });
    toast(msg);
    return msg;
  }
}

function setupDialogs() {
  $("#help-options").append(...HELP.map((x) => h("label", {},
    h("input", { type: "checkbox", name: "help", value: x }), " ", h("span", {}, t(`help.${x}`)))));
  $("#outcomes").append(...OUTCOMES.map((x) => h("option", { value: x }, t(`outcome.${x}`))));
  const forms = {
    dispatch: (f) => {
      const help = [...f.querySelectorAll("input[name=help]:checked")].map((i) => i.value);
      if (!help.length) return { error: t("dispatch.pick_one") };
      return { body: { help, note: f.note.value } };
    },
    note: (f) => ({ body: { text: f.text.value } }),
    resolve: (f) => ({ body: { outcome: f.outcome.value, reason: f.reason.value || null } }),
  };
  for (const [action, read] of Object.entries(forms)) {
    const dlg = $(`#${action}-dlg`);
    const form = $("form", dlg);
    $(".cancel", dlg).addEventListener("click", () => dlg.close());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const { body, error } = read(form);
      const failed = error || (await act(action, Number(dlg.dataset.incident), body));
      if (failed) $(".form-error", dlg).textContent = failed;
      else dlg.close();
    });
    dlg.addEventListener("close", focusSelected);
  }
  $("#help-dlg").addEventListener("close", focusSelected);
}

let toastTimer = null;
function toast(text) {
  $("#toast").textContent = text;
  $("#toast").classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => $("#toast").classList.remove("show"), 4000);
}

// -- keyboard --------------------------------------------------------------------------------

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (document.querySelector("dialog[open]")) return; // dialogs handle their own keys
  if (ev.target.closest("input, textarea, select")) return;
  const keys = {
    j: () => move(1), ArrowDown: () => move(1),
    k: () => move(-1), ArrowUp: () => move(-1),
    a: () => startAction("acknowledge"),
    d: () => startAction("dispatch"),
    r: () => startAction("resolve"),
    n: () => startAction("note"),
    "?": () => $("#help-dlg").showModal(),
    Enter: () => {
      if (!ev.target.closest("#queue")) return false;
      $("#detail").focus();
      return true;
    },
  };
  const fn = keys[ev.key];
  if (fn && fn() !== false) ev.preventDefault();
}

// -- KPIs ------------------------------------------------------------------------------------

let kpiTimer = null;
function refreshKpiSoon() {
  clearTimeout(kpiTimer);
  kpiTimer = setTimeout(refreshKpi, 300);
}

function isoDate(d) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

async function refreshKpi() {
  const level = LEVELS[Math.min(3, state.me.scope_path.split(".").length - 1)];
  const day = 86400 * 1000;
  // A day either side: the server counts local days of the hotline, which may not be ours.
  const since = isoDate(new Date(Date.now() - day));
  const until = isoDate(new Date(Date.now() + day));
  try {
    const k = await api(`/api/v1/kpis?level=${level}&since=${since}&until=${until}`);
    const rows = k.rows.filter((r) => r.area === state.me.scope_path);
    const latest = rows.sort((a, b) => (a.day < b.day ? 1 : -1))[0];
    $("#kpi").textContent = latest ? t("console.kpi", { alarms: latest.alarms,
      p60: fmtPct(latest.ack_within_60s), p180: fmtPct(latest.ack_within_180s) })
      : t("console.kpi_none");
  } catch (err) {
    console.warn("kpi refresh failed", err);
  }
}

// -- WebSocket ---------------------------------------------------------------------------------

const ws = { sock: null, delayS: 0.5, retryAt: 0, timer: null };

function setConn(st, retryS) {
  const el = $("#conn");
  el.dataset.state = st;
  el.textContent = st === "live" ? t("conn.live") : st === "connecting" ? t("conn.connecting")
    : t("conn.offline", { s: Math.max(0, Math.ceil(retryS)) });
  $("#offline").hidden = st !== "offline";
}

function connect() {
  clearTimeout(ws.timer);
  if (!token()) return;
  setConn("connecting");
  const url = new URL("/api/v1/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", token());
  const sock = new WebSocket(url);
  ws.sock = sock;
  sock.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  sock.onclose = () => {
    if (ws.sock !== sock) return;
    ws.sock = null;
    // Capped exponential backoff with jitter, so a restarted server is not stampeded.
    const wait = ws.delayS * (0.5 + Math.random() * 0.5);
    ws.delayS = Math.min(ws.delayS * 2, 15);
    ws.retryAt = Date.now() / 1000 + wait;
    setConn("offline", wait);
    ws.timer = setTimeout(async () => {
      // A refused token looks like any other closed socket; ask before retrying.
      try {
        await api("/api/v1/auth/me");
      } catch (err) {
        if (err.status === 401) return; // the login dialog is up; it reconnects after
      }
      connect();
    }, wait * 1000);
  };
}

function onMessage(msg) {
  if (msg.type === "hello") {
    ws.delayS = 0.5;
    confirmed.clear();
    setConn("live");
    refreshQueue();
    refreshKpi();
    return;
  }
  if (msg.type === "resync") {
    refreshQueue();
    return;
  }
  if (msg.kind === "live_alarm") {
    // On screen before the incident is even stored; replaced once the incident exists.
    const known = [...state.incidents.values()].some((r) =>
      r.device_id === msg.device_id && r.kind === msg.incident_kind);
    if (!known && !state.provisional.has(msg.source_key)) {
      state.provisional.set(msg.source_key, msg);
      announce(msg.incident_kind, msg.severity, msg.device_id);
      renderQueue();
    }
    return;
  }
  if (msg.kind === "incident_event" && msg.action === "repeat_after_close") {
    // The live alarm was a device re-sending an event whose incident is already closed: no
    // incident will replace its provisional row, so it goes now (docs/alerts.md).
    for (const [k, p] of state.provisional) {
      if (p.device_id === msg.device_id && p.incident_kind === msg.incident_kind) {
        state.provisional.delete(k);
      }
    }
  }
  if (msg.kind === "incident_event" || msg.kind === "escalated") {
    refreshQueue();
    refreshKpiSoon();
    if (state.selected === `i:${msg.incident_id}`) loadDetail();
  }
}

// -- start -----------------------------------------------------------------------------------

function tick() {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = fmtAge(now - Number(el.dataset.since));
  }
  if ($("#conn").dataset.state === "offline") setConn("offline", ws.retryAt - now);
}

async function main() {
  setupLangSwitch($("#lang"));
  onLangChange(() => {
    renderQueue();
    if (state.detail) renderDetail();
    refreshKpi();
    setConn($("#conn").dataset.state, ws.retryAt - Date.now() / 1000);
  });
  setupDialogs();
  // Any click or key may be the gesture the browser wants before it plays sound.
  for (const evName of ["pointerdown", "keydown"]) {
    document.addEventListener(evName, () => sound.unlock(), { capture: true });
  }
  $("#sound").addEventListener("click", () => sound.unlock());
  $("#logout").addEventListener("click", logout);
  $("#help-btn").addEventListener("click", () => $("#help-dlg").showModal());
  document.addEventListener("keydown", onKey);
  document.addEventListener("visibilitychange", confirmShown);
  const loginDlg = $("#login");
  state.me = await signIn(loginDlg, ["dispatcher", "supervisor", "admin"]);
  $("#who").textContent = t("console.scope", { user: state.me.username,
    scope: state.me.scope_path });
  keepSignedIn(loginDlg, () => {
    if (!ws.sock) connect();
  });
  applyI18n();
  setInterval(tick, 1000);
  // Belt and braces: a full re-read now and then, in case an event was lost.
  setInterval(() => ws.sock && refreshQueue(), 30000);
  setInterval(refreshKpi, 60000);
  connect();
}

main();
