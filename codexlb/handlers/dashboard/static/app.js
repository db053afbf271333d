// The codexlb dashboard: plain DOM, no framework, everything through the admin API.
"use strict";

const state = { csrf: "", tab: "accounts", before: null, filters: {}, conversation: null, editing: null };
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

function barCell(row, percent, text) {
  const td = cell(row, "");
  const pct = Math.max(0, Math.min(100, percent));
  const bar = document.createElement("span");
  bar.className = "bar" + (pct >= 100 ? " full" : pct >= 80 ? " high" : "");
  const fill = document.createElement("span");
  fill.style.width = `${pct}%`;
  bar.appendChild(fill);
  td.append(bar, ` ${text}`);
  return td;
}

function windowCell(row, w) {
  if (!w) { cell(row, null); return; }
  barCell(row, w.used_percent, `${Math.max(0, Math.min(100, w.used_percent)).toFixed(0)}% · resets in ${inTime(w.reset_at)}`);
}

function count(n) { return Number(n).toLocaleString("en-US"); }

function size(n) {
  if (n === null || n === undefined) return null;
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(1)} MB`;
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

// A key's limits (the lead's key view): each shown with its use in the current window when the API gives it.
const LIMITS = ["rpm", "tokens_5h", "tokens_day", "tokens_week"];

function limitCell(row, key, name) {
  const limit = key[name], use = key.use && key.use[name];
  if (limit === null || limit === undefined) return cell(row, null);
  if (!use) return cell(row, short(limit));
  const td = barCell(row, limit ? 100 * use.used / limit : 100, `${short(use.used)} / ${short(limit)}`);
  td.title = `${count(use.used)} of ${count(limit)}` + (use.resets_at ? `, resets in ${inTime(use.resets_at)}` : "");
  return td;
}

function short(n) {
  return n < 10000 ? String(n) : n < 1e6 ? `${+(n / 1e3).toFixed(1)}K` : n < 1e9 ? `${+(n / 1e6).toFixed(1)}M`
    : `${+(n / 1e9).toFixed(1)}G`;
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
    for (const name of LIMITS) limitCell(tr, k, name).dataset.field = name;
    cell(tr, k.models ? k.models.join(", ") : null, "wrap").dataset.field = "models";
    const expires = cell(tr, k.expires_at ? new Date(k.expires_at * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : null);
    expires.dataset.field = "expires_at";
    if (k.expires_at && k.expires_at * 1000 <= Date.now()) expires.classList.add("failed");
    cell(tr, k.note, "wrap").dataset.field = "note";
    const td = cell(tr, "");
    if (k.status === "active") {
      actionButton(td, "Revoke", () => api("DELETE", `/api/keys/${encodeURIComponent(k.id)}`));
      const edit = document.createElement("button");
      edit.textContent = "Limits";
      edit.className = "edit-limits";
      edit.addEventListener("click", () => editLimits(k));
      td.appendChild(edit);
    }
    body.appendChild(tr);
  }
}

async function loadConversations() {
  const filters = $("conversation-filters").elements;
  const q = new URLSearchParams({ limit: "100", since: String(Math.floor(Date.now() / 1000) - Number(filters.span.value)) });
  if (filters.key.value.trim()) q.set("key", filters.key.value.trim());
  const { conversations } = await api("GET", `/api/conversations?${q}`);
  const body = $("conversation-rows");
  body.replaceChildren();
  for (const c of conversations) {
    const tr = document.createElement("tr");
    tr.dataset.conversation = c.conversation;
    tr.className = "pick" + (c.conversation === state.conversation ? " selected" : "");
    cell(tr, c.conversation, "mono"); cell(tr, c.api_key_name || c.api_key_id); cell(tr, c.account_alias || c.account_id);
    cell(tr, c.turns); cell(tr, c.requests);
    cell(tr, `${count(c.input_tokens)} / ${count(c.cached_tokens)} / ${count(c.output_tokens)}`);
    cell(tr, `${size(c.client_bytes)} / ${size(c.upstream_bytes)}`);
    cell(tr, saved(c));
    cell(tr, c.recoveries ? `${c.recoveries} (+${size(c.recovery_bytes)})` : 0, c.recoveries ? "recovered" : "");
    cell(tr, ago(c.last_seen));
    tr.addEventListener("click", () => loadConversation(c.conversation).catch(showError));
    body.appendChild(tr);
  }
  if (state.conversation) await loadConversation(state.conversation);
}

function saved(x) {
  const pct = x.unanchored_bytes ? ` (${(100 * x.saved_bytes / x.unanchored_bytes).toFixed(0)}%)` : "";
  return `${size(x.saved_bytes)}${pct}`;
}

async function loadConversation(id) {
  const { conversation, requests } = await api("GET", `/api/conversations/${encodeURIComponent(id)}`);
  state.conversation = id;
  document.querySelectorAll("#conversation-rows tr").forEach((tr) => {
    tr.classList.toggle("selected", tr.dataset.conversation === id);
  });
  $("conversation-title").textContent = `${id}: ${conversation.turns} turns, ${requests.length} requests, ` +
    `${size(conversation.saved_bytes)} saved, ${conversation.recoveries} recoveries`;
  drawConversation(requests);
  const body = $("conversation-requests");
  body.replaceChildren();
  requests.forEach((r, i) => {
    const tr = document.createElement("tr");
    tr.dataset.request = r.id;
    if (r.status >= 400) tr.className = "failed";
    cell(tr, i + 1); cell(tr, new Date(r.ts * 1000).toLocaleTimeString()); cell(tr, r.transport);
    cell(tr, r.error_code ? `${r.status} ${r.error_code}` : r.status);
    cell(tr, `${count(r.input_tokens)} / ${count(r.cached_tokens)} / ${count(r.output_tokens)}`);
    cell(tr, size(r.client_bytes)); cell(tr, size(r.upstream_bytes)); cell(tr, saved(r));
    cell(tr, r.recoveries ? `${r.recovery_kinds} (+${size(r.recovery_bytes)})` : 0, r.recoveries ? "recovered" : "");
    body.appendChild(tr);
  });
  $("conversation-detail").hidden = false;
}

// The seed's picture: input tokens per request, and under them the part the model had not cached. While the
// anchor holds that part stays flat (only the turn's new items); where an anchor was lost it jumps (a cliff):
// the whole history went up again. Requests that needed a recovery are marked.
function drawConversation(requests) {
  const svg = $("conversation-chart");
  svg.replaceChildren();
  const left = 64, top = 12, width = 720 - left - 12, height = 260 - top - 28;
  // Four grid steps of 1, 2 or 5 times a power of ten, the top one at or above the highest point.
  const highest = Math.max(1, ...requests.map((r) => r.input_tokens || 0));
  const magnitude = 10 ** Math.floor(Math.log10(highest / 4));
  const tick = Math.max(1, [1, 2, 5, 10].map((m) => m * magnitude).find((t) => 4 * t >= highest));
  const max = 4 * tick;
  const step = width / Math.max(1, requests.length);
  const x = (i) => left + step * (i + 0.5);
  const y = (v) => top + height - height * v / max;
  for (let t = 0; t <= 4; t++) {
    const v = t * tick;
    svg.appendChild(svgEl("line", { x1: left, x2: left + width, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, count(v)));
  }
  const label = Math.max(1, Math.ceil(requests.length / 15));
  requests.forEach((r, i) => {
    if (i % label === 0) svg.appendChild(svgEl("text", { x: x(i), y: 254, "text-anchor": "middle", class: "axis" }, i + 1));
    if (r.recoveries) {
      const mark = svgEl("g", { class: "recovery", "data-index": i });
      mark.appendChild(svgEl("line", { x1: x(i), x2: x(i), y1: top, y2: top + height }));
      mark.appendChild(svgEl("path", { d: `M${x(i) - 5},${top} L${x(i) + 5},${top} L${x(i)},${top + 8} Z` }));
      mark.appendChild(svgEl("title", {}, `request ${i + 1}: ${r.recovery_kinds} (+${size(r.recovery_bytes)})`));
      svg.appendChild(mark);
    }
    const fresh = Math.max(0, (r.input_tokens || 0) - (r.cached_tokens || 0));
    const bar = svgEl("rect", { x: x(i) - Math.max(1, step * 0.3), width: Math.max(2, step * 0.6), y: y(fresh),
                                height: top + height - y(fresh), class: "uncached", "data-index": i });
    bar.appendChild(svgEl("title", {}, `request ${i + 1}: ${count(fresh)} input tokens not cached`));
    svg.appendChild(bar);
  });
  svg.appendChild(svgEl("polyline", { class: "input-line",
                                      points: requests.map((r, i) => `${x(i)},${y(r.input_tokens || 0)}`).join(" ") }));
  requests.forEach((r, i) => {
    const dot = svgEl("circle", { cx: x(i), cy: y(r.input_tokens || 0), r: 4,
                                  class: "point" + (r.recoveries ? " recovered" : "") + (r.status >= 400 ? " failed" : ""),
                                  "data-index": i, "data-request": r.id, "data-input-tokens": r.input_tokens });
    dot.appendChild(svgEl("title", {}, `request ${i + 1} (${r.transport}): ${count(r.input_tokens)} input tokens, ` +
                                       `${count(r.cached_tokens)} cached, ${count(r.output_tokens)} out`));
    svg.appendChild(dot);
  });
}

// The limits form holds one key's fields as the inputs show them; only what the operator changed is sent, so an
// expiry already past does not refuse a change to another limit.
function limitInputs(k) {
  const local = (ts) => { const d = new Date(ts * 1000); d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
                          return d.toISOString().slice(0, 16); };
  return { rpm: k.rpm ?? "", tokens_5h: k.tokens_5h ?? "", tokens_day: k.tokens_day ?? "",
           tokens_week: k.tokens_week ?? "", models: (k.models || []).join(", "),
           expires_at: k.expires_at ? local(k.expires_at) : "", note: k.note ?? "" };
}

function editLimits(k) {
  const form = $("limits-form");
  state.editing = { id: k.id, shown: limitInputs(k) };
  $("limits-key").textContent = `Limits of ${k.name}`;
  for (const [name, value] of Object.entries(state.editing.shown)) form.elements[name].value = String(value);
  form.hidden = false;
}

function limitChanges(form) {
  const changes = {};
  for (const [name, before] of Object.entries(state.editing.shown)) {
    const raw = form.elements[name].value.trim();
    if (raw === String(before)) continue;
    if (raw === "") changes[name] = null;
    else if (name === "models") changes[name] = raw.split(",").map((g) => g.trim()).filter(Boolean);
    else if (name === "expires_at") changes[name] = new Date(raw).toISOString();
    else if (name === "note") changes[name] = raw;
    else changes[name] = /^\d+$/.test(raw) ? Number(raw) : raw;  // not a number: the server says why
  }
  return changes;
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

const loaders = { accounts: loadAccounts, requests: () => loadRequests(false), usage: loadUsage,
                  conversations: loadConversations, keys: loadKeys };

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
  $("conversation-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.conversation = null;
    $("conversation-detail").hidden = true;
    loadConversations().catch(showError);
  });
  $("limits-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const changes = limitChanges(ev.target);
      if (Object.keys(changes).length) await api("PATCH", `/api/keys/${encodeURIComponent(state.editing.id)}`, changes);
      ev.target.hidden = true;
      await loadKeys();
    } catch (err) { showError(err); }
  });
  $("limits-cancel").addEventListener("click", () => { $("limits-form").hidden = true; });
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
