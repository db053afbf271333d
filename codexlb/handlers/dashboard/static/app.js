// The codexlb dashboard: plain DOM, no framework, everything through the admin API.
"use strict";

const state = { csrf: "", tab: "accounts", before: null, filters: {} };
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "dashboard";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   credentials: "same-origin" });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) { showLogin(); throw new Error("login required"); }
  if (!resp.ok) throw new Error((data.error && data.error.message) || `HTTP ${resp.status}`);
  return data;
}

function showError(err) { const e = $("error"); e.textContent = err ? String(err.message || err) : ""; e.hidden = !err; }

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.round(Date.now() / 1000 - ts);
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function inTime(ts) {
  const s = Math.round(ts - Date.now() / 1000);
  if (s <= 0) return "now";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : `${m} min`;
}

function windowCell(row, w) {
  const td = cell(row, "");
  if (!w) { td.textContent = "—"; return; }
  const pct = Math.max(0, Math.min(100, w.used_percent));
  const bar = document.createElement("span");
  bar.className = "bar" + (pct >= 100 ? " full" : pct >= 80 ? " high" : "");
  const fill = document.createElement("span");
  fill.style.width = `${pct}%`;
  bar.appendChild(fill);
  td.appendChild(bar);
  td.appendChild(document.createTextNode(` ${pct.toFixed(0)}% · resets in ${inTime(w.reset_at)}`));
}

function actionButton(td, label, fn) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", () => fn().then(refresh).catch(showError));
  td.appendChild(b);
}

async function loadAccounts() {
  const { accounts } = await api("GET", "/api/accounts");
  const body = $("account-rows");
  body.replaceChildren();
  for (const a of accounts) {
    const tr = document.createElement("tr");
    tr.dataset.alias = a.alias;
    cell(tr, a.alias); cell(tr, a.email); cell(tr, a.plan);
    cell(tr, a.status.replace("_", " "), `status status-${a.status}`);
    windowCell(tr, a.primary); windowCell(tr, a.secondary);
    cell(tr, ago(a.last_refresh)); cell(tr, a.inflight);
    const td = cell(tr, "");
    const ref = encodeURIComponent(a.alias);
    if (a.status === "paused") actionButton(td, "Resume", () => api("POST", `/api/accounts/${ref}/resume`));
    else actionButton(td, "Pause", () => api("POST", `/api/accounts/${ref}/pause`));
    actionButton(td, "Remove", () => confirm(`Remove ${a.alias}?`) ? api("DELETE", `/api/accounts/${ref}`) : Promise.resolve());
    body.appendChild(tr);
  }
}

async function loadRequests(more) {
  const q = new URLSearchParams({ ...state.filters, limit: "50" });
  if (more && state.before) q.set("before", state.before);
  const { requests, next_before } = await api("GET", `/api/requests?${q}`);
  const body = $("request-rows");
  if (!more) body.replaceChildren();
  for (const r of requests) {
    const tr = document.createElement("tr");
    if (r.status >= 400) tr.className = "failed";
    cell(tr, new Date(r.ts * 1000).toLocaleString()); cell(tr, r.route); cell(tr, r.account_id);
    cell(tr, r.api_key_id); cell(tr, r.model); cell(tr, r.status); cell(tr, r.error_code);
    cell(tr, `${r.input_tokens} / ${r.cached_tokens} / ${r.output_tokens}`);
    cell(tr, r.ttfb_ms === null ? null : `${r.ttfb_ms} ms`); cell(tr, `${r.duration_ms} ms`);
    body.appendChild(tr);
  }
  state.before = next_before;
  $("more-requests").hidden = !next_before;
}

const COLORS = ["#0969da", "#1f883d", "#bf8700", "#8250df", "#cf222e", "#1b7c83", "#9a6700"];

async function names(by) {
  // The series names accounts and keys by id; people know them by alias and name.
  if (by === "account") {
    const { accounts } = await api("GET", "/api/accounts");
    return Object.fromEntries(accounts.map((a) => [a.id, a.alias]));
  }
  const { keys } = await api("GET", "/api/keys");
  return Object.fromEntries(keys.map((k) => [k.id, k.name]));
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, v));
  if (text !== undefined) el.textContent = text;
  return el;
}

async function loadUsage() {
  const by = $("usage-by").value;
  const [{ points, bucket_s }, label] = await Promise.all([
    api("GET", `/api/usage/series?by=${by}&hours=24&bucket=3600`), names(by)]);
  const svg = $("usage-chart"), legend = $("usage-legend");
  svg.replaceChildren(); legend.replaceChildren();
  const buckets = 24, slot = 720 / buckets;
  // The last slot is the current bucket, so every bucket of the last day fits whole.
  const start = (Math.floor(Date.now() / 1000 / bucket_s) - (buckets - 1)) * bucket_s;
  const who = [...new Set(points.map((p) => p.who || "—"))];
  const max = Math.max(1, ...points.map((p) => p.input_tokens + p.output_tokens));
  const width = slot / Math.max(1, who.length);
  for (let h = 0; h < buckets; h += 6) {
    const when = new Date((start + h * bucket_s) * 1000);
    svg.appendChild(svgEl("text", { x: h * slot + 2, y: 238, "font-size": 10, fill: "#5b6570" },
                          when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  points.forEach((p) => {
    const i = who.indexOf(p.who || "—");
    const h = 210 * (p.input_tokens + p.output_tokens) / max;
    const name = label[p.who] || p.who || "—";
    const rect = svgEl("rect", { x: ((p.t - start) / bucket_s) * slot + i * width, y: 225 - h,
                                 width: Math.max(1, width - 1), height: h, fill: COLORS[i % COLORS.length] });
    rect.appendChild(svgEl("title", {}, `${name}: ${p.input_tokens} in (${p.cached_tokens} cached), ` +
                                        `${p.output_tokens} out, ${p.requests} requests`));
    svg.appendChild(rect);
  });
  who.forEach((w, i) => {
    const li = document.createElement("li");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i % COLORS.length];
    li.append(swatch, label[w] || w);
    legend.appendChild(li);
  });
}

async function loadKeys() {
  const { keys } = await api("GET", "/api/keys");
  const body = $("key-rows");
  body.replaceChildren();
  for (const k of keys) {
    const tr = document.createElement("tr");
    tr.dataset.name = k.name;
    cell(tr, k.name); cell(tr, k.id); cell(tr, `${k.prefix}…`); cell(tr, k.status, `status status-${k.status}`);
    cell(tr, ago(k.last_used_at)); cell(tr, k.max_concurrency);
    const td = cell(tr, "");
    if (k.status === "active") actionButton(td, "Revoke", () => api("DELETE", `/api/keys/${encodeURIComponent(k.id)}`));
    body.appendChild(tr);
  }
}

let lastLive = null;

async function loadLive() {
  const live = await api("GET", "/api/live");
  const rate = lastLive && live.at > lastLive.at ? (live.admitted - lastLive.admitted) / (live.at - lastLive.at) : 0;
  lastLive = live;
  const el = $("live");
  el.textContent = `${live.in_flight} in flight · ${live.waiting} waiting · ${rate.toFixed(1)} req/s · ` +
    `${live.admitted} served · ${live.rejected} turned away`;
  el.hidden = false;
}

async function deviceSignIn() {
  const shown = $("device-code");
  const started = await api("POST", "/api/accounts/device");
  shown.textContent = `Open ${started.verification_url} on any device and enter the code ${started.user_code}`;
  shown.hidden = false;
  for (;;) {
    await new Promise((done) => setTimeout(done, 2000));
    const answer = await api("GET", `/api/accounts/device/${encodeURIComponent(started.id)}`);
    if (answer.status === "added") { shown.textContent = `Added ${answer.account.alias}.`; await loadAccounts(); return; }
    if (answer.status === "failed") throw new Error(answer.error);
  }
}

const loaders = { accounts: loadAccounts, requests: () => loadRequests(false), usage: loadUsage, keys: loadKeys };

async function refresh() {
  showError(null);
  await Promise.all([loaders[state.tab](), loadLive()]);
}

function showTab(tab) {
  state.tab = tab;
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== tab; });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
  refresh().catch(showError);
}

function showLogin() {
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = true; });
  $("tabs").hidden = true; $("live").hidden = true; $("logout").hidden = true;
  $("login").hidden = false;
}

function showApp(loggedIn) {
  $("login").hidden = true; $("tabs").hidden = false; $("logout").hidden = !loggedIn;
  showTab(state.tab);
}

async function start() {
  const session = await fetch("/api/session", { credentials: "same-origin" }).then((r) => r.json());
  state.csrf = session.csrf_token || "";
  if (session.authenticated) showApp(Boolean(session.csrf_token)); else showLogin();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const resp = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ password: $("password").value }), credentials: "same-origin" });
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.error.message);
      state.csrf = data.csrf_token; $("password").value = "";
      showApp(true);
    } catch (err) { showError(err); }
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout"); state.csrf = ""; start(); });
  $("request-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.filters = Object.fromEntries([...new FormData(ev.target)].filter(([, v]) => v));
    loadRequests(false).catch(showError);
  });
  $("more-requests").addEventListener("click", () => loadRequests(true).catch(showError));
  $("usage-by").addEventListener("change", () => loadUsage().catch(showError));
  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const limit = parseInt($("key-limit").value, 10);
    try {
      const made = await api("POST", "/api/keys", { name: $("key-name").value || undefined,
                                                    max_concurrency: Number.isNaN(limit) ? undefined : limit });
      const shown = $("new-key");
      shown.textContent = `New key ${made.api_key.name} (shown once, copy it now): ${made.key}`;
      shown.hidden = false;
      $("key-name").value = ""; $("key-limit").value = "";
      await loadKeys();
    } catch (err) { showError(err); }
  });
  $("import-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const auth = JSON.parse(await $("auth-file").files[0].text());
      if ($("auth-alias").value) auth.alias = $("auth-alias").value;
      await api("POST", "/api/accounts", auth);
      ev.target.reset();
      await loadAccounts();
    } catch (err) { showError(err); }
  });
  $("device-start").addEventListener("click", () => deviceSignIn().catch(showError));
  start().catch(showError);
  setInterval(() => { if (!$("tabs").hidden) loadLive().catch(() => {}); }, 5000);
});
