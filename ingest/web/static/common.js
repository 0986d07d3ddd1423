// Shared by the console and the dashboard: translation, DOM and SVG builders, the signed-in
// session (token in sessionStorage, so it dies with the tab, renewed before it expires) and the
// login dialog.

import { LANGS, STRINGS } from "./i18n.js";

// -- translation ---------------------------------------------------------------------------

const LANG_KEY = "carecall.lang";
let lang = localStorage.getItem(LANG_KEY) || (navigator.language.startsWith("zh") ? "zh" : "en");
if (!STRINGS[lang]) lang = "en";
const langListeners = [];

export function t(key, vars = {}) {
  // Fall back to English, then to the key itself, so a gap shows up instead of a blank.
  const s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, k) => (k in vars ? String(vars[k]) : `{${k}}`));
}

/** The translation of `key` if the table has one, else `fallback` (data from the server). */
export function tOr(key, fallback) {
  return key in STRINGS.en ? t(key) : fallback;
}

export function currentLang() {
  return lang;
}

export function onLangChange(fn) {
  langListeners.push(fn);
}

/** Fill every [data-i18n] (text), [data-i18n-label] (aria-label), [data-i18n-title]. */
export function applyI18n(root = document) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
}

export function setupLangSwitch(select) {
  for (const [code, name] of Object.entries(LANGS)) {
    select.append(h("option", { value: code, selected: code === lang }, name));
  }
  select.addEventListener("change", () => {
    lang = select.value;
    localStorage.setItem(LANG_KEY, lang);
    applyI18n();
    for (const fn of langListeners) fn(lang);
  });
  applyI18n();
}

// -- DOM and SVG -----------------------------------------------------------------------------

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element; text children are text nodes, never parsed as HTML. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export const $ = (sel, root = document) => root.querySelector(sel);

// -- formatting ------------------------------------------------------------------------------

export function fmtAge(seconds) {
  const sec = Math.max(0, Math.floor(seconds));
  const hms = [Math.floor(sec / 3600), Math.floor((sec % 3600) / 60), sec % 60];
  const pad = (n) => String(n).padStart(2, "0");
  return hms[0] > 0 ? `${hms[0]}:${pad(hms[1])}:${pad(hms[2])}` : `${hms[1]}:${pad(hms[2])}`;
}

export function fmtSeconds(sec) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return t("common.none");
  if (sec < 0) return `−${fmtSeconds(-sec)}`; // a device clock ahead of ours
  if (sec < 1) return `${(sec * 1000).toFixed(sec < 0.01 ? 1 : 0)} ms`;
  if (sec < 120) return `${sec.toFixed(1)} s`;
  return fmtAge(sec);
}

export function fmtTime(epochOrIso) {
  const d = typeof epochOrIso === "number" ? new Date(epochOrIso * 1000) : new Date(epochOrIso);
  return d.toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
}

export function fmtNumber(x, digits = 0) {
  if (x === null || x === undefined) return t("common.none");
  return Number(x).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", {
    maximumFractionDigits: digits,
    minimumFractionDigits: digits,
  });
}

export function fmtPct(x) {
  return x === null || x === undefined ? t("common.none") : `${Math.round(x * 100)} %`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return t("common.none");
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// -- session ---------------------------------------------------------------------------------

const TOKEN_KEY = "carecall.token";
const TOKEN_AT_KEY = "carecall.token_at"; // when this tab received it (our clock, ms)

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function setToken(tok) {
  sessionStorage.setItem(TOKEN_KEY, tok);
  sessionStorage.setItem(TOKEN_AT_KEY, String(Date.now()));
  scheduleRefresh();
}

function dropToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(TOKEN_AT_KEY);
  clearTimeout(refresher.timer);
}

/** The token's lifetime in seconds (exp - iat), read from its payload; the server checks it. */
function lifetimeS(tok) {
  try {
    const b64 = tok.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "=")));
    const life = Number(claims.exp) - Number(claims.iat);
    return Number.isFinite(life) && life > 0 ? life : null;
  } catch {
    return null;
  }
}

// -- keeping the session: a shift is longer than a token ----------------------------------------

const REFRESH_RETRY_MS = 10000;
const refresher = { timer: null, running: false };

/**
 * Renew the token a third of its lifetime (at most 5 min) before it expires. Timed from when
 * this tab received it, so a wrong clock on the workstation does not matter; after the
 * computer slept, the overdue renewal runs at once (and a token that expired meanwhile brings
 * the login dialog up, as any 401 does).
 */
function scheduleRefresh() {
  clearTimeout(refresher.timer);
  const tok = token();
  const life = tok && lifetimeS(tok);
  if (!life) return;
  const at = Number(sessionStorage.getItem(TOKEN_AT_KEY)) || Date.now();
  const dueMs = at + (life - Math.min(300, life / 3)) * 1000 - Date.now();
  refresher.timer = setTimeout(refreshToken, Math.max(0, dueMs));
}

/** POST /api/v1/auth/refresh with the current token; a refusal means: sign in again. */
async function refreshToken() {
  const current = token();
  if (!current || refresher.running) return;
  refresher.running = true;
  try {
    const resp = await fetch("/api/v1/auth/refresh", {
      method: "POST",
      headers: { Authorization: `Bearer ${current}` },
    });
    if (token() !== current) return; // signed in again meanwhile: that token wins
    if (resp.status === 401) {
      // Expired, revoked, user retired, or the session is over.
      dropToken();
      onUnauthorized();
      return;
    }
    if (!resp.ok) throw new HttpError(resp.status, resp.statusText);
    setToken((await resp.json()).access_token);
  } catch (err) {
    // The server is restarting or the network is down: try again while the token holds.
    console.warn("token refresh failed; retrying", err);
    clearTimeout(refresher.timer);
    refresher.timer = setTimeout(refreshToken, REFRESH_RETRY_MS);
  } finally {
    refresher.running = false;
  }
}

export class HttpError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

let onUnauthorized = () => {};

/** JSON API call with the bearer token; a 401 drops the token and asks for a new login. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    dropToken();
    onUnauthorized();
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      const j = await resp.json();
      detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
    } catch {
      // not JSON: keep the status text
    }
    throw new HttpError(resp.status, detail);
  }
  return resp.json();
}

/**
 * Resolve with the signed-in staff record (GET /api/v1/auth/me), showing the login dialog
 * until a sign-in works. `roles` limits who may use the page.
 */
export function signIn(dialog, roles) {
  const form = $("form", dialog);
  const error = $(".form-error", dialog);
  // The dialog cannot be dismissed: nothing on the page works without a session.
  dialog.addEventListener("cancel", (ev) => ev.preventDefault());
  return new Promise((resolve) => {
    async function check() {
      if (!token()) return false;
      try {
        const me = await api("/api/v1/auth/me");
        if (roles && !roles.includes(me.role)) {
          dropToken();
          error.textContent = t("login.forbidden");
          return false;
        }
        resolve(me);
        return true;
      } catch {
        return false;
      }
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      const data = new URLSearchParams(new FormData(form));
      const resp = await fetch("/api/v1/auth/token", { method: "POST", body: data });
      if (!resp.ok) {
        const key = { 401: "login.failed", 429: "login.throttled" }[resp.status] || "login.error";
        error.textContent = t(key, { status: resp.status });
        return;
      }
      setToken((await resp.json()).access_token);
      form.reset();
      if (await check()) dialog.close();
    });
    check().then((ok) => {
      if (!ok) {
        dialog.showModal();
        $("input[name=username]", dialog).focus();
      }
    });
  });
}

/**
 * After sign-in: the token is renewed before it expires, for as long as the server allows the
 * session (a 12-hour shift); a 401 (revoked, or the session is over) reopens the login dialog
 * over the page.
 */
export function keepSignedIn(dialog, afterLogin) {
  scheduleRefresh();
  // Timers sleep with the computer: look again when the page is shown.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") scheduleRefresh();
  });
  onUnauthorized = () => {
    if (dialog.open) return;
    $(".form-error", dialog).textContent = t("login.expired");
    dialog.showModal();
    $("input[name=username]", dialog).focus();
  };
  dialog.addEventListener("close", () => {
    if (token()) afterLogin();
  });
}

export function logout() {
  dropToken();
  location.reload();
}

// -- charts ----------------------------------------------------------------------------------

/**
 * A sparkline: one polyline per series over a shared time axis, in an SVG of the given size.
 * `series` is [{values: [number|null], cls}] aligned with `times`; gaps stay gaps.
 */
export function sparkline(times, series, { width = 240, height = 48, min = 0, max } = {}) {
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const top = max ?? Math.max(1e-9, ...all) * 1.1;
  const t0 = times[0];
  const span = Math.max(1e-9, times[times.length - 1] - t0);
  const x = (tt) => ((tt - t0) / span) * (width - 2) + 1;
  const y = (v) => height - 1 - ((v - min) / Math.max(1e-9, top - min)) * (height - 2);
  const svg = s("svg", {
    class: "spark",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    "aria-hidden": "true",
  });
  svg.append(s("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
  for (const { values, cls } of series) {
    let d = "";
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        d += " ";
        return;
      }
      const cmd = i === 0 || values[i - 1] === null || values[i - 1] === undefined ? "M" : "L";
      d += `${cmd}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`;
    });
    if (d.trim()) svg.append(s("path", { d: d.trim(), class: `line ${cls || ""}` }));
    // A value with no neighbour draws no line: mark it with a dot so it is not lost.
    const gap = (i) => values[i] === null || values[i] === undefined;
    values.forEach((v, i) => {
      if (!gap(i) && (i === 0 || gap(i - 1)) && (i === values.length - 1 || gap(i + 1))) {
        svg.append(s("circle", { cx: x(times[i]), cy: y(v), r: 2.5, class: `pt ${cls || ""}` }));
      }
    });
  }
  return svg;
}
