// Fleet drill-down pages (gateway, device, alert history) and the overview's gateway list.
// Plain DOM: every value from the server goes in through textContent / attributes, never innerHTML.
"use strict";

const Fleet = (() => {
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "cls") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, String(v));
      else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function ago(ms, now) {
    if (!ms) return "never";
    const s = Math.max(0, (now - ms) / 1000);
    return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  }
  const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    return body;
  }

  const gwHref = (gw) => `/fleet/gateway?gw=${encodeURIComponent(gw)}`;
  const devHref = (gw, dev) => `/fleet/device?gw=${encodeURIComponent(gw)}&dev=${encodeURIComponent(dev)}`;

  function table(headers, rows) {
    const t = h("table", { cls: "grid" });
    t.append(h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", { text: x })))));
    const body = h("tbody", {});
    for (const r of rows) body.append(r);
    t.append(body);
    return t;
  }
  const td = (v, attrs) => h("td", { text: v ?? "–", ...(attrs || {}) });
  const tdNode = (node) => h("td", {}, node);

  function fill(id, ...nodes) {
    const box = $(id);
    box.replaceChildren(...nodes);
  }
  const empty = (msg) => h("p", { cls: "empty", text: msg });

  // A line chart of [at, value] points over the last spanMs, in SVG built with DOM calls.
  function chart(points, now, spanMs, label, color) {
    const NS = "http://www.w3.org/2000/svg", W = 640, H = 140, P = 34;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", "100%");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const max = Math.max(1, ...points.map((p) => p[1]));
    const mk = (tag, a) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(a)) n.setAttribute(k, String(v)); svg.append(n); return n; };
    mk("line", { x1: P, y1: H - 20, x2: W - 4, y2: H - 20, stroke: "#ccd" });
    mk("text", { x: 2, y: 12 }).textContent = String(Math.round(max * 10) / 10);
    mk("text", { x: 2, y: H - 20 }).textContent = "0";
    mk("text", { x: P, y: H - 4 }).textContent = `-${Math.round(spanMs / 60000)} min`;
    mk("text", { x: W - 30, y: H - 4 }).textContent = "now";
    const xy = (p) => `${(P + (W - P - 4) * (1 - (now - p[0]) / spanMs)).toFixed(1)},${(H - 20 - (H - 28) * p[1] / max).toFixed(1)}`;
    mk("polyline", { fill: "none", stroke: color, "stroke-width": 2, points: points.map(xy).join(" ") });
    return svg;
  }

  function alertRows(alerts, now) {
    return alerts.map((a) => h("tr", { "data-alert": a.kind, cls: a.closed_ms ? "closed" : a.severity },
      td(a.closed_ms ? "closed" : "open"), td(a.severity), td(a.kind),
      tdNode(h("a", { href: gwHref(a.gateway), text: a.gateway })),
      a.device_id ? tdNode(h("a", { href: devHref(a.gateway, a.device_id), text: a.device_id })) : td("–"),
      td(a.message), td(when(a.opened_ms)), td(a.closed_ms ? when(a.closed_ms) : ago(a.opened_ms, now))));
  }
  const ALERT_HEAD = ["", "severity", "kind", "gateway", "device", "message", "opened", "closed / age"];

  function deviceRows(gw, devices, now) {
    return devices.map((d) => h("tr", { "data-device": d.device_id, "data-state": d.state },
      tdNode(h("a", { href: devHref(gw, d.device_id), text: d.device_id })), td(d.kind),
      td(d.state, { cls: d.state === "online" ? "ok" : "bad" }), td(ago(d.last_seen_ms, now)),
      td(d.battery == null ? "–" : `${d.battery} %`), td(d.firmware), td(d.reads), td(d.errors), td(d.naks),
      td(d.last_error)));
  }
  const DEVICE_HEAD = ["device", "kind", "state", "last seen", "battery", "firmware", "reads", "errors", "NAKs", "last error"];

  function kv(pairs) {
    const dl = h("dl", { cls: "kv" });
    for (const [k, v] of pairs) dl.append(h("dt", { text: k }), h("dd", {}, v instanceof Node ? v : String(v ?? "–")));
    return dl;
  }

  async function gatewayPage() {
    const gw = new URLSearchParams(location.search).get("gw") || "";
    document.title = `Storegate — ${gw}`;
    $("title").textContent = gw;
    let g;
    try { g = await getJSON(`/api/fleet/gateways/${encodeURIComponent(gw)}`); }
    catch (e) { fill("status", h("p", { cls: "error", text: e.message })); return; }
    const now = g.now_ms, full = g.state === "online" && g.storage_state === "full";
    document.body.dataset.gateway = g.gateway;
    document.body.dataset.state = g.state;
    const stateBadge = h("b", { cls: g.state === "online" ? "ok" : "bad", text: g.state.toUpperCase(), id: "link-state" });
    fill("status", kv([
      ["link", stateBadge], ["since", `${when(g.state_since_ms)} (${ago(g.state_since_ms, now)})`],
      ["site", g.site || "(unassigned)"], ["last status", ago(g.last_status_ms, now)],
      ["backlog", `${g.backlog} records`], ["oldest unsent", `${g.oldest_age_s.toFixed(1)} s`],
      ["last sync", ago(g.last_sync_ms, now)], ["clock offset", g.clock_offset_ms == null ? "?" : `${g.clock_offset_ms} ms`],
      ["version", g.version], ["disk", full ? h("b", { cls: "bad", text: `FULL since ${ago(g.storage_since_ms, now)} (${g.storage_reason || "no reason"})` }) : "ok"],
      ["free bytes", g.storage_free_bytes],
    ]));
    const answers = g.answers || {};
    fill("counts", kv([
      ["accepted", answers.accepted || 0], ["rejected", h("span", { id: "n-rejected", text: answers.rejected || 0 })],
      ["quarantined", h("span", { id: "n-quarantined", text: g.quarantined })],
      ["rejected (gateway's count)", g.rejected], ["open alerts", g.alerts.filter((a) => !a.closed_ms).length],
    ]));
    const span = 3600 * 1000;
    fill("backlog-chart", chart(g.history.map((p) => [p[0], p[1]]), now, span, "backlog", "#3b7dd8"));
    fill("age-chart", chart(g.history.map((p) => [p[0], p[2]]), now, span, "oldest age", "#e0a100"));
    fill("devices", g.devices.length ? table(DEVICE_HEAD, deviceRows(g.gateway, g.devices, now)) : empty("no devices reported"));
    fill("records", g.records.length ? table(["seq", "record", "type", "answer", "reason", "ref", "at"],
      g.records.map((r) => h("tr", { "data-record": r.record_id, "data-status": r.status },
        td(r.seq), td(r.record_id), td(r.type), td(r.status, { cls: r.status === "rejected" ? "bad" : "ok" }),
        td(r.reason), td(r.ref), td(when(r.processed_at)))))
      : empty("no records from this gateway"));
    fill("quarantine", g.quarantine.length ? table(["#", "record", "seq", "type", "reason", "at"],
      g.quarantine.map((q) => h("tr", { "data-quarantine": q.id }, td(q.id), td(q.record_id), td(q.seq), td(q.type),
        td(q.reason, { cls: "bad" }), td(when(q.at)))))
      : empty("nothing quarantined"));
    fill("alerts", g.alerts.length ? table(ALERT_HEAD, alertRows(g.alerts, now)) : empty("no alerts"));
    $("alerts-link").href = `/fleet/alerts?gateway=${encodeURIComponent(g.gateway)}`;
    fill("events", g.events.length ? table(["at", "device", "event", "detail"],
      g.events.map((e) => h("tr", {}, td(when(e.at)), td(e.device_id), td(e.event), td(e.detail))))
      : empty("no events"));
    document.body.dataset.loaded = "1";
  }

  async function devicePage() {
    const qs = new URLSearchParams(location.search), gw = qs.get("gw") || "", dev = qs.get("dev") || "";
    document.title = `Storegate — ${dev} at ${gw}`;
    $("title").textContent = `${dev} at ${gw}`;
    $("gw-link").href = gwHref(gw);
    $("gw-link").textContent = `← ${gw}`;
    let d;
    try { d = await getJSON(`/api/fleet/gateways/${encodeURIComponent(gw)}/devices/${encodeURIComponent(dev)}`); }
    catch (e) { fill("status", h("p", { cls: "error", text: e.message })); return; }
    const now = d.now_ms;
    document.body.dataset.device = d.device_id;
    fill("status", kv([
      ["state", h("b", { cls: d.state === "online" ? "ok" : "bad", text: d.state.toUpperCase(), id: "device-state" })],
      ["kind", d.kind], ["gateway", h("a", { href: gwHref(d.gateway), text: `${d.gateway} (${d.gateway_state})` })],
      ["site", d.site || "(unassigned)"], ["last seen", `${when(d.last_seen_ms)} (${ago(d.last_seen_ms, now)})`],
      ["battery", d.battery == null ? "–" : `${d.battery} %`], ["firmware", d.firmware], ["reads", d.reads],
      ["errors", d.errors], ["NAKs", d.naks], ["last error", d.last_error], ["reported", ago(d.updated_ms, now)],
    ]));
    fill("alerts", d.alerts.length ? table(ALERT_HEAD, alertRows(d.alerts, now)) : empty("no alerts"));
    fill("events", d.events.length ? table(["at", "event", "detail"],
      d.events.map((e) => h("tr", {}, td(when(e.at)), td(e.event), td(e.detail)))) : empty("no events"));
    document.body.dataset.loaded = "1";
  }

  async function alertsPage() {
    const qs = new URLSearchParams(location.search);
    for (const k of ["gateway", "kind", "state"]) if (qs.get(k)) $(`f-${k}`).value = qs.get(k);
    let before = null;
    async function load(more) {
      const p = new URLSearchParams();
      for (const k of ["gateway", "kind", "state"]) if ($(`f-${k}`).value) p.set(k, $(`f-${k}`).value);
      if (more && before) p.set("before", before);
      const r = await getJSON(`/api/fleet/alerts?${p}`);
      const kinds = $("f-kind"), cur = kinds.value;
      kinds.replaceChildren(h("option", { value: "", text: "any kind" }), ...r.kinds.map((k) => h("option", { value: k, text: k })));
      kinds.value = cur;
      const rows = alertRows(r.alerts, Date.now());
      if (more) $("alert-rows").append(...rows);
      else fill("alerts", r.alerts.length ? table(ALERT_HEAD, rows) : empty("no alerts match"));
      const tb = $("alerts").querySelector("tbody");
      if (tb) tb.id = "alert-rows";
      before = r.next_before;
      $("more").hidden = !before;
      document.body.dataset.loaded = "1";
    }
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); load(false); });
    $("more").addEventListener("click", () => load(true));
    await load(false);
  }

  // The overview: summary chips, a search box, one page of gateways problems-first.
  function overview(opts) {
    let offset = 0, pending = null, inflight = false;
    const limit = opts.limit || 50;
    async function load() {
      if (inflight) { pending = true; return; }
      inflight = true;
      try {
        const p = new URLSearchParams({ limit, offset });
        const q = $("search").value.trim(), st = $("state-filter").value;
        if (q) p.set("q", q);
        if (st) p.set("state", st);
        const r = await getJSON(`/api/fleet/gateways?${p}`);
        renderList(r);
      } catch (e) {
        fill("fleet", h("p", { cls: "error", text: e.message }));
      } finally {
        inflight = false;
        if (pending) { pending = null; load(); }
      }
    }
    function renderList(r) {
      const s = r.summary, now = r.now_ms;
      for (const [k, v] of Object.entries(s)) { const n = $(`s-${k}`); if (n) n.textContent = v; }
      const cards = r.items.map((g) => {
        const card = h("div", { cls: `gw${g.problem ? " problem-" + g.problem : ""}${g.state === "online" && g.oldest_age_s > 60 ? " lagging" : ""}${g.state === "online" && g.storage_state === "full" ? " disk-full" : ""}`,
          "data-gateway": g.gateway, "data-state": g.state, "data-problem": g.problem },
          h("span", { cls: "state", text: g.state === "online" ? "ONLINE" : "OFFLINE" }),
          h("a", { cls: "name", href: gwHref(g.gateway), text: g.gateway }),
          h("div", { cls: "meta", text: `${g.site || "(unassigned)"} · ${g.problem ? g.problem.replace("_", " ") : "ok"}` }));
        if (g.state === "online" && g.storage_state === "full") {
          card.append(h("div", { cls: "disk", "data-storage": "full", title: g.storage_reason || "",
            text: `DISK FULL since ${ago(g.storage_since_ms, now)}${g.storage_free_bytes != null ? " · " + g.storage_free_bytes + " B free" : ""}` }));
        }
        card.append(
          h("div", { cls: "meta", text: `backlog ${g.backlog} · oldest ${g.oldest_age_s.toFixed(1)} s` }),
          h("div", { cls: "meta", text: `last sync ${ago(g.last_sync_ms, now)} · clock ${g.clock_offset_ms ?? "?"} ms` }),
          h("div", { cls: "meta", text: `${g.state === "online" ? "since" : "offline since"} ${ago(g.state_since_ms, now)}` }),
          h("div", { cls: "meta", text: `${g.devices} devices${g.devices_offline ? ` (${g.devices_offline} offline)` : ""} · ${g.alerts} open alerts` }),
          h("div", { cls: "devs" }, ...g.device_list.map((d) => h("a", { cls: "dev", href: devHref(g.gateway, d.device_id),
            "data-device": d.device_id, "data-state": d.state, title: d.kind,
            text: `${d.device_id}${d.battery != null ? " " + d.battery + "%" : ""}` }))));
        return card;
      });
      fill("fleet", ...(cards.length ? cards : [empty(r.total || $("search").value ? "no gateway matches" : "no gateway has reported yet")]));
      $("page-info").textContent = r.total ? `${r.offset + 1}–${r.offset + r.items.length} of ${r.total}` : "0 of 0";
      $("prev").disabled = r.offset === 0;
      $("next").disabled = r.offset + r.items.length >= r.total;
      document.body.dataset.listTotal = r.total;
    }
    let t = null;
    $("search").addEventListener("input", () => { clearTimeout(t); t = setTimeout(() => { offset = 0; load(); }, 200); });
    $("state-filter").addEventListener("change", () => { offset = 0; load(); });
    $("prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
    $("next").addEventListener("click", () => { offset += limit; load(); });
    load();
    return { refresh: load };
  }

  return { gatewayPage, devicePage, alertsPage, overview, h, ago };
})();

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "gateway") Fleet.gatewayPage();
  else if (page === "device") Fleet.devicePage();
  else if (page === "alerts") Fleet.alertsPage();
});
