// The operator dashboard: is the system keeping up? Polls GET /api/v1/ops/summary every few
// seconds and draws each figure as a sparkline of the last minutes next to its current value.
// The server keeps the history (ingest/web/ops.py), so a freshly opened page is not empty.

import {
  $,
  api,
  fmtBytes,
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
  sparkline,
  t,
} from "./common.js";

const POLL_MS = 3000;
const STALE_S = 10;
const SEVERITIES = ["critical", "high", "medium", "low", "info"];
let summary = null;
let lastOk = 0;

function noData() {
  return h("p", { class: "muted" }, t("common.no_data"));
}

/** One row of a series panel: label, sparkline of `values`, current value formatted. */
function seriesRow(label, times, lines, current) {
  const spark = times.length >= 2 ? sparkline(times, lines, { width: 200, height: 36 })
    : h("span", { class: "muted" }, t("common.no_data"));
  return [h("span", {}, label), spark, h("span", { class: "v" }, current)];
}

function keysOf(history, field) {
  const keys = new Set();
  for (const p of history) for (const k of Object.keys(p[field] || {})) keys.add(k);
  return [...keys].sort();
}

function renderHealth(last) {
  const flags = [
    ["db_up", last?.db_up === 1, last?.db_up === 1 ? "ops.ok" : "ops.down"],
    ["mqtt_connected", last?.mqtt_connected === 1, last?.mqtt_connected === 1 ? "ops.ok" : "ops.down"],
    ["reading_paused", last?.reading_paused !== 1, last?.reading_paused === 1 ? "ops.on" : "ops.off"],
    ["broker_drop_alarm", last?.broker_drop_alarm !== 1,
      last?.broker_drop_alarm === 1 ? "ops.on" : "ops.off"],
  ];
  $("#health").replaceChildren(...flags.map(([key, good, word]) => h("span", {
    class: `pill ${last ? (good ? "ok" : "bad") : ""}`,
  }, `${t(`ops.${key}`)}: ${last ? t(word) : t("common.no_data")}`)));
}

function render() {
  if (!summary) return;
  const hist = summary.history;
  const times = hist.map((p) => p.t);
  const last = hist[hist.length - 1];
  renderHealth(last);

  const gauge = (key, fmt) => seriesRow(t(`ops.${key}`), times,
    [{ values: hist.map((p) => p[key]) }], last ? fmt(last[key]) : t("common.none"));
  $("#queues").replaceChildren(...[
    gauge("pending_acks", (v) => fmtNumber(v)),
    gauge("spool_bytes", fmtBytes),
    gauge("alert_pending", (v) => fmtNumber(v)),
    gauge("consoles", (v) => fmtNumber(v)),
  ].flat());

  const kinds = keysOf(hist, "received_per_s");
  const total = hist.map((p) => Object.values(p.received_per_s).reduce((a, b) => a + b, 0));
  $("#throughput").replaceChildren(...[
    seriesRow(t("ops.total"), times, [{ values: total }],
      last ? `${fmtNumber(total[total.length - 1], 1)}/s` : t("common.none")),
    ...kinds.map((k) => seriesRow(k, times, [{ values: hist.map((p) => p.received_per_s[k] ?? 0) }],
      `${fmtNumber(last?.received_per_s[k] ?? 0, 1)}/s`)),
  ].flat());

  const reasons = [...new Set([...keysOf(hist, "rejected_per_s"),
    ...Object.keys(summary.rejected_total)])].sort();
  $("#rejected").replaceChildren(...(reasons.length ? reasons.map((r) => seriesRow(r, times,
    [{ values: hist.map((p) => p.rejected_per_s[r] ?? 0), cls: "p95" }],
    `${fmtNumber(last?.rejected_per_s[r] ?? 0, 1)}/s · ${fmtNumber(summary.rejected_total[r] ?? 0)}`))
    .flat() : [noData()]));

  const lat = (key) => hist.map((p) => p[key]);
  $("#latency").replaceChildren(...[
    seriesRow("commit p50 / p95", times,
      [{ values: lat("commit_p50_s"), cls: "p50" }, { values: lat("commit_p95_s"), cls: "p95" }],
      `${fmtSeconds(last?.commit_p50_s)} / ${fmtSeconds(last?.commit_p95_s)}`),
    seriesRow(t("ops.lag"), times, [{ values: lat("lag_p95_s"), cls: "p95" }],
      fmtSeconds(last?.lag_p95_s)),
    seriesRow(t("ops.durable"), times, [{ values: lat("durable_p95_s"), cls: "p95" }],
      fmtSeconds(last?.durable_p95_s)),
  ].flat());

  renderDevices(summary.devices);
  renderIncidents(summary.incidents);
  renderKpis(summary.kpis);
  $("#notes-panel").hidden = summary.notes.length === 0;
  $("#notes").replaceChildren(...summary.notes.map((n) => h("li", {}, n)));
}

function renderDevices(d) {
  if (!d) {
    $("#devices").replaceChildren(noData());
    return;
  }
  const parts = ["online", "offline", "never_seen"];
  const W = 300;
  let x = 0;
  const bar = s("svg", { class: "stack", viewBox: `0 0 ${W} 20`, width: "100%", height: 20,
    preserveAspectRatio: "none", role: "img",
    "aria-label": parts.map((p) => `${t(`ops.${p}`)} ${d[p]}`).join(", ") });
  for (const p of parts) {
    const w = d.total ? (d[p] / d.total) * W : 0;
    bar.append(s("rect", { x, y: 0, width: w, height: 20, class: p }));
    x += w;
  }
  $("#devices").replaceChildren(bar, h("div", { class: "legend" },
    parts.map((p) => h("span", {}, h("span", { class: `sw ${p}` }), `${t(`ops.${p}`)} ${d[p]}`)),
    h("span", {}, `${t("ops.battery_low")} ${d.battery_low}`),
    h("span", {}, `${t("ops.total")} ${d.total}`)));
}

/** A horizontal bar split by severity; the widest bar in the panel sets the scale. */
function severityBar(bySeverity, scaleMax) {
  const W = 200;
  const svg = s("svg", { class: "hbar", viewBox: `0 0 ${W} 14`, width: W, height: 14,
    "aria-hidden": "true" });
  let x = 0;
  for (const sev of SEVERITIES) {
    const n = bySeverity[sev] || 0;
    const w = (n / Math.max(1, scaleMax)) * W;
    if (n) svg.append(s("rect", { x, y: 0, width: w, height: 14, class: sev }));
    x += w;
  }
  return svg;
}

function renderIncidents(inc) {
  if (!inc) {
    $("#incidents").replaceChildren(noData());
    return;
  }
  const total = Object.values(inc.by_severity).reduce((a, b) => a + b, 0);
  if (!total) {
    $("#incidents").replaceChildren(h("p", { class: "muted" }, t("ops.no_incidents")));
    return;
  }
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  const max = Math.max(...inc.by_district.map((d) => sum(d.by_severity)));
  const name = (d) => (document.documentElement.lang.startsWith("zh") && d.name_zh) || d.name;
  $("#incidents").replaceChildren(
    h("h3", {}, t("ops.by_severity")),
    h("div", { class: "legend" }, SEVERITIES.filter((x) => inc.by_severity[x]).map((x) =>
      h("span", {}, h("span", { class: `sw ${x}` }), `${t(`severity.${x}`)} ${inc.by_severity[x]}`))),
    severityBar(inc.by_severity, total),
    h("h3", {}, t("ops.by_district")),
    h("table", { class: "data" }, h("tbody", {}, inc.by_district.map((d) => h("tr", {},
      h("th", { scope: "row" }, name(d)),
      h("td", {}, severityBar(d.by_severity, max)),
      h("td", { class: "num" }, sum(d.by_severity)))))));
}

function meter(frac, warnBelow) {
  const W = 80;
  return s("svg", { class: "meter", viewBox: `0 0 ${W} 10`, "aria-hidden": "true" },
    s("rect", { class: "bg", x: 0, y: 0, width: W, height: 10 }),
    frac == null ? null : s("rect", { class: `fg${frac < warnBelow ? " warn" : ""}`, x: 0, y: 0,
      width: frac * W, height: 10 }));
}

function renderKpis(k) {
  if (!k) {
    $("#kpis").replaceChildren(noData());
    return;
  }
  if (!k.rows.length) {
    $("#kpis").replaceChildren(h("p", { class: "muted" }, t("ops.no_kpis")));
    return;
  }
  // Per area: totals over the days shown, and the day-by-day share answered within 60 s.
  const areas = new Map();
  for (const r of k.rows) {
    const a = areas.get(r.area) || { area: r.area, alarms: 0, in60: 0, in180: 0, days: [] };
    a.alarms += r.alarms;
    a.in60 += r.ack_within_60s * r.alarms;
    a.in180 += r.ack_within_180s * r.alarms;
    a.days.push(r);
    areas.set(r.area, a);
  }
  const dayList = [];
  for (let d = new Date(k.since); d <= new Date(k.until); d.setDate(d.getDate() + 1)) {
    dayList.push(d.toISOString().slice(0, 10));
  }
  const head = h("tr", {}, [t("ops.area"), t("ops.alarms"), t("ops.within60"), t("ops.within180"),
    t("ops.trend")].map((x) => h("th", { scope: "col" }, x)));
  const rows = [...areas.values()].map((a) => {
    const byDay = new Map(a.days.map((r) => [r.day, r.ack_within_60s]));
    const trend = sparkline(dayList.map((_, i) => i), [{ values: dayList.map((d) => byDay.get(d) ?? null) }],
      { width: 120, height: 24, min: 0, max: 1 });
    const p60 = a.in60 / a.alarms;
    const p180 = a.in180 / a.alarms;
    return h("tr", {},
      h("th", { scope: "row" }, a.area),
      h("td", { class: "num" }, a.alarms),
      h("td", { class: "num" }, meter(p60, 0.9), " ", fmtPct(p60)),
      h("td", { class: "num" }, meter(p180, 0.98), " ", fmtPct(p180)),
      h("td", {}, trend));
  });
  $("#kpis").replaceChildren(h("table", { class: "data" }, h("thead", {}, head),
    h("tbody", {}, rows)));
}

function renderUpdated() {
  const el = $("#updated");
  if (!lastOk) return;
  const stale = Date.now() / 1000 - lastOk > STALE_S;
  el.classList.toggle("stale", stale);
  el.textContent = t(stale ? "ops.stale" : "ops.updated", { at: fmtTime(lastOk) });
}

async function poll() {
  try {
    summary = await api(`/api/v1/ops/summary?level=${$("#level").value}`);
    lastOk = Date.now() / 1000;
    render();
  } catch (err) {
    console.warn("summary failed", err);
  }
  renderUpdated();
}

async function main() {
  setupLangSwitch($("#lang"));
  onLangChange(() => {
    render();
    renderUpdated();
  });
  $("#logout").addEventListener("click", logout);
  $("#level").addEventListener("change", poll);
  const dlg = $("#login");
  const me = await signIn(dlg, ["operator", "supervisor", "admin"]);
  $("#who").textContent = `${me.username} · ${me.scope_path}`;
  keepSignedIn(dlg, poll);
  await poll();
  setInterval(poll, POLL_MS);
}

main();
