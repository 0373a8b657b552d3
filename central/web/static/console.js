// Storegate order console: vanilla JS over central's REST API (see central/ORDERS.md, "Order console").
// Every value shown is put in the DOM as text (textContent / text nodes), never as HTML.
"use strict";

const ROLES = ["viewer", "order_desk", "supervisor"];
const STATUSES = ["received", "validated", "held", "allocated", "released", "picked", "shipped", "delivered", "cancelled", "returned"];
const CHANNELS = ["scanner", "hid-scanner", "handheld", "pos-auto", "manual", "rest", "edi", "schedule"];
const TYPES = ["normal", "cash-sale", "drop-ship", "contract", "consignment", "voucher"];
const CHANGEABLE = new Set(["received", "held", "validated", "allocated"]);
const CANCELLABLE = new Set(["received", "held", "validated", "allocated"]);
const RETURNABLE = new Set(["shipped", "delivered"]);
const RETURN_REASONS = ["wrong_item", "unwanted", "overstock", "defective", "repairable", "damaged", "expired"];
const PAGE = 50;

let ME = { name: "?", role: "viewer", roles: ["viewer"] };
const can = (role) => ME.roles.includes(role);

// -- DOM helpers: text only ------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "class") e.className = v;
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}
const $ = (sel) => document.querySelector(sel);
// replaceChildren without null/false holes (they would show as "null")
const fill = (el, ...kids) => el.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false).map((k) => (k instanceof Node ? k : document.createTextNode(String(k)))));
const fmtTime = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "");
const when = (ms) => h("span", { class: "nw" }, fmtTime(ms));
// amounts are integers in the currency's minor unit, as the API and the hold reasons give them
const money = (v) => (v === null || v === undefined ? "" : String(v));
const badge = (status, attr = "status") => h("span", { class: "badge", dataset: { [attr]: status } }, status);
const empty = (text) => h("p", { class: "empty" }, text);

function table(cols, rows, opts = {}) {
  const head = h("tr", {}, cols.map((c) => h("th", { class: c.num ? "num" : null }, c.label)));
  const body = rows.map((r) => {
    const tr = h("tr", { class: [opts.rowClass ? opts.rowClass(r) : "", opts.onRow ? "click" : ""].join(" ").trim() || null },
      cols.map((c) => h("td", { class: c.num ? "num" : null }, c.cell ? c.cell(r) : r[c.key] ?? "")));
    if (opts.onRow) tr.addEventListener("click", (ev) => { if (!ev.target.closest("button,input,select,a")) opts.onRow(r); });
    if (opts.rowData) Object.assign(tr.dataset, opts.rowData(r));
    return tr;
  });
  return h("table", { dataset: opts.dataset || {} }, h("thead", {}, head), h("tbody", {}, body));
}

function flash(text, isError = false) {
  const f = $("#flash");
  f.textContent = text;
  f.className = isError ? "error" : "";
}

// -- REST -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(path, init);
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

// Run an action; show its outcome; redraw the view.
async function act(label, fn) {
  try {
    const said = await fn();
    flash(typeof said === "string" ? `${label}: ${said}` : `${label}: done`);
  } catch (e) {
    flash(`${label}: ${e.message}`, true);
  }
  await route();
}

function roleButton(role, text, onclick, extra = {}) {
  if (!can(role)) return null; // the server refuses it anyway
  return h("button", { type: "button", onclick, dataset: { role }, ...extra }, text);
}

// -- views ----------------------------------------------------------------------------------
async function ordersView(params) {
  const field = (name, label, options) => {
    const value = params.get(name) || "";
    const input = options
      ? h("select", { name }, h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: o === value }, o)))
      : h("input", { name, value, size: 12 });
    return h("label", {}, label, input);
  };
  const form = h("form", { class: "filters", id: "order-search" },
    field("order_no", "order no"), field("customer", "customer"), field("status", "status", STATUSES),
    field("channel", "channel", CHANNELS), field("order_type", "type", TYPES), field("gateway", "gateway"),
    h("button", { class: "primary", type: "submit" }, "Search"),
    h("button", { type: "button", onclick: () => { location.hash = "#orders"; } }, "Clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
    location.hash = "#orders?" + q.toString();
  });
  const results = h("div", { id: "order-results" });
  const view = [h("section", {}, h("h2", {}, "Search orders"), form), h("section", {}, h("h2", {}, "Orders"), results)];
  const query = new URLSearchParams(params);
  if (!query.has("limit")) query.set("limit", String(PAGE));
  const cols = [
    { label: "order", cell: (o) => h("a", { href: `#order/${encodeURIComponent(o.order_no)}` }, o.order_no) },
    { label: "customer", key: "customer" }, { label: "type", key: "order_type" }, { label: "channel", key: "channel" },
    { label: "gateway", key: "gateway" }, { label: "status", cell: (o) => badge(o.status) },
    { label: "value", num: true, cell: (o) => money(o.value) }, { label: "requested", cell: (o) => h("span", { class: "nw" }, o.requested_date) },
    { label: "hold", cell: (o) => h("span", { class: "hold" }, o.hold_reason || "") },
    { label: "updated", cell: (o) => when(o.updated_at) },
  ];
  let rows = [];
  const load = async (after) => {
    if (after) query.set("after", String(after));
    const data = await api("GET", "/api/orders?" + query.toString());
    rows = rows.concat(data.orders);
    fill(results,
      rows.length ? table(cols, rows, { onRow: (o) => { location.hash = `#order/${encodeURIComponent(o.order_no)}`; }, rowData: (o) => ({ order: o.order_no }), dataset: { count: rows.length } }) : empty("no order matches"),
      data.next_after ? h("div", { class: "actions" }, h("button", { type: "button", id: "more", onclick: () => load(data.next_after) }, "More")) : null);
  };
  await load(0);
  return view;
}

async function orderView(key) {
  const o = await api("GET", `/api/orders/${encodeURIComponent(key)}`);
  const [alloc, rets] = await Promise.all([
    api("GET", `/api/allocation/orders/${o.order_id}`),
    api("GET", `/api/returns?order_id=${o.order_id}`),
  ]);
  const no = encodeURIComponent(o.order_no);
  const post = (path, body) => api("POST", `/api/orders/${no}/${path}`, body);
  const reasonInput = h("input", { id: "action-reason", placeholder: "reason (recorded)", size: 28 });
  const reason = () => reasonInput.value.trim() || undefined;

  // header + actions
  const kv = h("dl", { class: "kv" }, [
    ["customer", o.customer], ["type", o.order_type], ["channel", o.channel], ["gateway", o.gateway || "–"],
    ["requested", o.requested_date], ["value", money(o.value)], ["source ref", o.source_ref || "–"],
    ["note", o.note || "–"], ["requirements", o.requirements || "–"], ["received", fmtTime(o.received_at)],
  ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const held = o.status === "held";
  const actions = h("div", { class: "actions", id: "order-actions" },
    (can("order_desk") || can("supervisor")) && (held || CANCELLABLE.has(o.status)) ? reasonInput : null,
    held ? roleButton("supervisor", "Approve", () => act("approve", () => post("approve", { reason: reason() })), { class: "primary", id: "approve" }) : null,
    held ? roleButton("supervisor", "Reject", () => act("reject", () => post("reject", { reason: reason() })), { class: "danger", id: "reject" }) : null,
    held ? roleButton("order_desk", "Check again", () => act("revalidate", () => post("revalidate")), { id: "revalidate" }) : null,
    CANCELLABLE.has(o.status) ? roleButton("order_desk", "Cancel order", () => {
      if (confirm(`Cancel ${o.order_no}?`)) act("cancel", () => post("cancel", { reason: reason() }));
    }, { class: "danger", id: "cancel-order" }) : null,
    h("a", { href: `#note/${o.order_id}`, id: "delivery-note" }, "Delivery note"));
  const head = h("section", { id: "order-head", dataset: { status: o.status, order: o.order_no } },
    h("h2", {}, `Order ${o.order_no} `, badge(o.status)),
    o.hold_reason ? h("p", { class: "hold", id: "hold-reason" }, `held: ${o.hold_reason}`) : null,
    kv, actions);

  // lines, with changes while the order is not released
  const editable = can("order_desk") && CHANGEABLE.has(o.status);
  const lineCols = [
    { label: "line", key: "line_no" }, { label: "sku", key: "sku" }, { label: "gtin", key: "gtin" },
    { label: "qty", num: true, cell: (l) => editable && !l.cancelled
      ? h("input", { type: "number", min: 1, value: l.qty, id: `qty-${l.line_no}`, "aria-label": `quantity line ${l.line_no}` }) : l.qty },
    { label: "unit price", num: true, cell: (l) => money(l.unit_price) },
    { label: "amount", num: true, cell: (l) => money(l.amount) },
    { label: "quoted", num: true, cell: (l) => money(l.price) },
  ];
  if (editable) lineCols.push({ label: "", cell: (l) => l.cancelled ? "cancelled" : h("span", { class: "nw" },
    h("button", { type: "button", dataset: { role: "order_desk" }, id: `set-qty-${l.line_no}`, onclick: () => {
      const qty = Number($(`#qty-${l.line_no}`).value);
      act(`line ${l.line_no} quantity`, () => post("changes", { action: "set_qty", line_no: l.line_no, qty, reason: reason() || "changed at the console" }));
    } }, "Set qty"), " ",
    h("button", { type: "button", class: "danger", dataset: { role: "order_desk" }, id: `cancel-line-${l.line_no}`,
      onclick: () => act(`cancel line ${l.line_no}`, () => post("changes", { action: "cancel_line", line_no: l.line_no, reason: reason() || "cancelled at the console" })) }, "Cancel line")) });
  let addLine = null;
  if (editable) {
    const sku = h("input", { id: "add-sku", placeholder: "sku", size: 10 });
    const qty = h("input", { id: "add-qty", type: "number", min: 1, value: 1 });
    addLine = h("form", { class: "filters", id: "add-line" }, h("label", {}, "sku", sku), h("label", {}, "qty", qty),
      h("button", { type: "submit" }, "Add line"));
    addLine.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act("add line", () => post("changes", { action: "add_line", sku: sku.value.trim(), qty: Number(qty.value), reason: reason() || "added at the console" }));
    });
  }
  const lines = h("section", { id: "order-lines" }, h("h2", {}, "Lines"),
    table(lineCols, o.lines, { rowClass: (l) => (l.cancelled ? "cancelled" : ""), rowData: (l) => ({ line: l.line_no }) }), addLine);

  const checks = h("section", { id: "order-checks" }, h("h2", {}, "Checks"), o.checks.length ? table([
    { label: "run", key: "run" }, { label: "check", key: "name" }, { label: "outcome", cell: (c) => badge(c.outcome, "outcome") },
    { label: "detail", key: "detail" }, { label: "at", cell: (c) => when(c.at) },
  ], o.checks) : empty("no checks ran"));
  const history = h("section", { id: "order-history" }, h("h2", {}, "History"), table([
    { label: "at", cell: (e) => when(e.at) }, { label: "event", key: "event" }, { label: "status", cell: (e) => (e.status ? badge(e.status) : "") },
    { label: "detail", key: "detail" }, { label: "by", key: "actor" },
  ], o.events));

  // allocation with its runs' traces and replay
  const runIds = [...new Set([...alloc.allocations, ...alloc.shortages].map((a) => a.run_id).filter((r) => r))].sort((a, b) => a - b);
  const traceBox = h("div", { id: "trace" });
  const showTrace = async (run) => {
    const text = await api("GET", `/api/allocation/runs/${run}`);
    const out = h("span", { class: "replay" });
    fill(traceBox, h("h3", {}, `Allocation run ${run}`), h("pre", { class: "trace", id: `trace-${run}` }, text),
      h("div", { class: "actions" }, h("button", { type: "button", id: `replay-${run}`, onclick: async () => {
        const r = await api("GET", `/api/allocation/runs/${run}?replay=1`);
        out.textContent = r.identical ? `replayed: identical trace (sha256 ${r.replay_digest.slice(0, 12)}…)` : `replayed: DIFFERENT trace (stored ${r.stored_digest.slice(0, 12)}…, replay ${r.replay_digest.slice(0, 12)}…)`;
        out.dataset.identical = String(r.identical);
      } }, "Replay"), out));
  };
  const allocation = h("section", { id: "order-allocation" }, h("h2", {}, "Allocation"),
    alloc.allocations.length ? table([
      { label: "line", key: "line_no" }, { label: "location", key: "location" }, { label: "sku", key: "sku" },
      { label: "qty", num: true, key: "qty" }, { label: "status", key: "status" }, { label: "rule", key: "rule" },
      { label: "run", key: "run_id" }, { label: "wave", cell: (a) => (a.wave_id ? h("a", { href: `#waves` }, String(a.wave_id)) : "") },
    ], alloc.allocations) : empty("nothing allocated"),
    alloc.shortages.length ? [h("h3", {}, "Shortages"), table([
      { label: "line", key: "line_no" }, { label: "sku", key: "sku" }, { label: "short", num: true, key: "qty" },
      { label: "filled", num: true, key: "filled" }, { label: "action", key: "action" }, { label: "status", key: "status" }, { label: "reason", key: "reason" },
    ], alloc.shortages)] : null,
    runIds.length ? h("div", { class: "actions" }, "Trace: ", runIds.map((r) => h("button", { type: "button", id: `run-${r}`, onclick: () => showTrace(r) }, `run ${r}`))) : null,
    traceBox);

  // returns
  let retForm = null;
  if (RETURNABLE.has(o.status) && can("order_desk")) {
    const line = h("select", { id: "ret-line" }, o.lines.filter((l) => !l.cancelled).map((l) => h("option", { value: l.line_no }, `${l.line_no} ${l.sku || l.gtin}`)));
    const qty = h("input", { id: "ret-qty", type: "number", min: 1, value: 1 });
    const why = h("select", { id: "ret-reason" }, RETURN_REASONS.map((r) => h("option", { value: r }, r)));
    retForm = h("form", { class: "filters", id: "return-form" }, h("label", {}, "line", line), h("label", {}, "qty", qty), h("label", {}, "reason", why),
      h("button", { type: "submit", class: "primary" }, "Book return"));
    retForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act("return", () => api("POST", "/api/returns", { order_id: o.order_id, line_no: Number(line.value), qty: Number(qty.value), reason: why.value }));
    });
  }
  const rets_ = h("section", { id: "order-returns" }, h("h2", {}, "Returns"), rets.returns.length ? table([
    { label: "RMA", key: "rma_id" }, { label: "line", key: "line_no" }, { label: "sku", key: "sku" }, { label: "qty", num: true, key: "qty" },
    { label: "reason", key: "reason" }, { label: "disposition", key: "disposition" }, { label: "location", key: "location" },
    { label: "credit", num: true, cell: (r) => money(r.credit) }, { label: "at", cell: (r) => when(r.created_at) },
  ], rets.returns, { dataset: { count: rets.returns.length } }) : empty(RETURNABLE.has(o.status) ? "no returns yet" : "returns are taken on shipped or delivered orders"), retForm);

  return [head, h("div", { class: "grid2" }, lines, checks), history, allocation, rets_];
}

async function shortagesView(params) {
  const by = params.get("by") === "customer" ? "customer" : "item";
  const status = params.get("status") ?? "open";
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  for (const k of ["sku", "customer"]) if (params.get(k)) q.set(k, params.get(k));
  const data = await api("GET", "/api/shortages?" + q.toString());
  const key = by === "item" ? "sku" : "customer";
  const groups = new Map();
  for (const s of data.shortages) {
    const g = groups.get(s[key]) || { key: s[key], lines: 0, units: 0, orders: new Set(), other: new Set() };
    g.lines += 1; g.units += s.qty - s.filled; g.orders.add(s.order_id); g.other.add(by === "item" ? s.customer : s.sku);
    groups.set(s[key], g);
  }
  const tab = (b, label) => h("a", { href: `#shortages?by=${b}&status=${encodeURIComponent(status)}`, class: b === by ? "on" : null, id: `by-${b}` }, label);
  const summary = [...groups.values()].sort((a, b) => b.units - a.units);
  const form = h("form", { class: "filters", id: "shortage-filter" },
    h("label", {}, "sku", h("input", { name: "sku", value: params.get("sku") || "", size: 10 })),
    h("label", {}, "customer", h("input", { name: "customer", value: params.get("customer") || "", size: 10 })),
    h("label", {}, "status", h("select", { name: "status" }, [["open", "open"], ["", "any"], ["filled", "filled"], ["cancelled", "cancelled"], ["cut", "cut"], ["expired", "expired"]]
      .map(([v, t]) => h("option", { value: v, selected: v === status }, t)))),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const nq = new URLSearchParams({ by });
    for (const [k, v] of new FormData(form)) if (k === "status" || String(v).trim()) nq.set(k, String(v).trim());
    location.hash = "#shortages?" + nq.toString();
  });
  return [
    h("section", {}, h("h2", {}, `Shortages by ${by}`), form,
      h("div", { class: "actions" }, tab("item", "by item"), " · ", tab("customer", "by customer"), " · ",
        h("a", { href: `/api/documents/shortages.html?by=${by}&status=${encodeURIComponent(status)}`, target: "_blank" }, "printable report")),
      summary.length ? table([
        { label: by, key: "key" }, { label: "lines", num: true, key: "lines" }, { label: "units short", num: true, key: "units" },
        { label: "orders", cell: (g) => [...g.orders].sort((a, b) => a - b).map((id) => h("a", { href: `#orderid/${id}` }, `#${id} `)) },
        { label: by === "item" ? "customers" : "items", cell: (g) => [...g.other].sort().join(" ") },
      ], summary, { dataset: { by } }) : empty(`no ${status || ""} shortages`)),
    h("section", {}, h("h2", {}, "Shortage lines"), data.shortages.length ? table([
      { label: "id", key: "shortage_id" }, { label: "order", cell: (s) => h("a", { href: `#orderid/${s.order_id}` }, `#${s.order_id}`) },
      { label: "line", key: "line_no" }, { label: "sku", key: "sku" }, { label: "customer", key: "customer" },
      { label: "short", num: true, key: "qty" }, { label: "filled", num: true, key: "filled" }, { label: "action", key: "action" },
      { label: "status", key: "status" }, { label: "supplier", key: "supplier" }, { label: "reason", key: "reason" },
    ], data.shortages) : empty("none")),
  ];
}

async function wavesView() {
  const data = await api("GET", "/api/waves");
  const detail = h("div", { id: "wave-detail" });
  const open = async (w) => {
    const full = await api("GET", `/api/waves/${w.wave_id}`);
    fill(detail, h("h3", {}, `Wave ${w.wave_id}: ${full.orders.length} orders`),
      h("p", {}, full.orders.map((id) => h("a", { href: `#orderid/${id}` }, `#${id} `))));
  };
  const cols = [
    { label: "wave", key: "wave_id" }, { label: "batch", key: "batch_key" }, { label: "cut-off", cell: (w) => when(w.cutoff) },
    { label: "departure", cell: (w) => when(w.departure) }, { label: "status", cell: (w) => badge(w.status) },
    { label: "pick time", num: true, cell: (w) => `${Math.round(w.pick_seconds)} s` },
    { label: "", cell: (w) => [
      w.status !== "released" ? roleButton("order_desk", "Release", () => {
        act(`release wave ${w.wave_id}`, async () => { const r = await api("POST", `/api/waves/${w.wave_id}/release`); return `${r.tasks} pick tasks sent to the DC`; });
      }, { class: "primary", id: `release-${w.wave_id}` }) : null, " ",
      h("a", { href: `#picklist/${w.wave_id}`, id: `picklist-${w.wave_id}` }, "Pick list"), " ",
      w.run_id ? h("button", { type: "button", onclick: () => showRun(detail, w.run_id) }, "Trace") : null,
    ] },
  ];
  const make = roleButton("order_desk", "Make waves from validated orders", () => act("make waves", async () => `${(await api("POST", "/api/waves", {})).waves.length} new waves`), { id: "make-waves" });
  return [h("section", {}, h("h2", {}, "Waves"), h("div", { class: "actions" }, make),
    data.waves.length ? table(cols, data.waves, { onRow: open, rowData: (w) => ({ wave: w.wave_id, status: w.status }) }) : empty("no waves yet"), detail)];
}

async function showRun(box, run) {
  const text = await api("GET", `/api/allocation/runs/${run}`);
  fill(box, h("h3", {}, `Allocation run ${run}`), h("pre", { class: "trace" }, text));
}

// -- printable documents (from the CSV documents; print CSS hides everything else) --------
function parseCsv(text) {
  const rows = []; let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(cell); cell = ""; }
    else if (c === "\n") { row.push(cell); rows.push(row); row = []; cell = ""; }
    else if (c !== "\r") cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  const [head, ...body] = rows;
  return (body || []).map((r) => Object.fromEntries(head.map((k, i) => [k, r[i] ?? ""])));
}

function docView(title, meta, csvPath, htmlPath, groupBy, mark, check) {
  return api("GET", csvPath).then((text) => {
    const rows = parseCsv(text);
    const cols = rows.length ? Object.keys(rows[0]).filter((k) => k !== groupBy) : [];
    const groups = new Map();
    for (const r of rows) { const k = groupBy ? r[groupBy] : ""; if (!groups.has(k)) groups.set(k, []); groups.get(k).push(r); }
    const tables = [...groups.entries()].map(([k, grp]) => [groupBy ? h("h2", {}, `${groupBy} ${k}`) : null,
      table([...cols.map((c) => ({ label: c, key: c, num: ["qty", "ordered", "shipped", "short", "seq"].includes(c) })),
        ...(check ? [{ label: check, cell: () => h("span", { class: "box" }) }] : [])], grp,
        { rowClass: (r) => (mark && Number(r[mark]) > 0 ? "short" : "") })]);
    return [h("section", { class: "doc", id: "document" },
      h("div", { class: "actions noprint" }, h("button", { type: "button", class: "primary", onclick: () => window.print() }, "Print"),
        h("button", { type: "button", onclick: () => history.back() }, "Back"), h("a", { href: htmlPath, target: "_blank" }, "plain HTML"), h("a", { href: csvPath }, "CSV")),
      h("h1", {}, title), h("div", { class: "meta" }, meta),
      rows.length ? tables : empty("nothing to show"))];
  });
}

async function pickListView(wave) {
  const w = await api("GET", `/api/waves/${wave}`);
  return docView(`Pick list — wave ${wave}`, `batch ${w.batch_key} · ${w.orders.length} orders · status ${w.status} · cut-off ${fmtTime(w.cutoff)} · printed ${fmtTime(Date.now())}`,
    `/api/documents/picklist/${wave}.csv`, `/api/documents/picklist/${wave}.html`, "cart", null, "picked");
}

async function noteView(orderId) {
  const rows = await api("GET", `/api/orders?limit=1&after=${orderId - 1}`);
  const o = rows.orders.find((x) => x.order_id === orderId);
  const title = o ? `Delivery note ${o.order_no}` : `Delivery note — order ${orderId}`;
  const meta = o ? `customer ${o.customer} · requested ${o.requested_date} · status ${o.status}` : "";
  return docView(title, meta, `/api/documents/delivery-note/${orderId}.csv`, `/api/documents/delivery-note/${orderId}.html`, null, "short", "received");
}

async function orderIdView(id) {
  const rows = await api("GET", `/api/orders?limit=1&after=${id - 1}`);
  const o = rows.orders.find((x) => x.order_id === id);
  if (!o) throw new ApiError(404, `no order ${id}`);
  location.replace(`#order/${encodeURIComponent(o.order_no)}`);
  return [];
}

// -- router ---------------------------------------------------------------------------------
async function route() {
  const hash = location.hash.slice(1) || "orders";
  const [path, qs] = hash.split("?");
  const params = new URLSearchParams(qs || "");
  const [name, arg] = path.split("/");
  for (const a of document.querySelectorAll("nav a[data-nav]")) a.classList.toggle("on", a.dataset.nav === (name === "order" ? "orders" : name));
  const view = $("#view");
  try {
    let content;
    if (name === "order") content = await orderView(decodeURIComponent(arg));
    else if (name === "orderid") content = await orderIdView(Number(arg));
    else if (name === "shortages") content = await shortagesView(params);
    else if (name === "waves") content = await wavesView();
    else if (name === "picklist") content = await pickListView(Number(arg));
    else if (name === "note") content = await noteView(Number(arg));
    else content = await ordersView(params);
    fill(view, ...[content].flat());
    view.dataset.view = name;
  } catch (e) {
    fill(view, h("section", {}, h("p", { class: "hold", id: "view-error" }, e.message)));
    view.dataset.view = "error";
  }
}

async function start() {
  ME = await api("GET", "/api/me");
  $("#who").replaceChildren("signed in as ", h("b", {}, ME.name), ` (${ME.role})`);
  document.body.dataset.role = ME.role;
  window.addEventListener("hashchange", () => { flash(""); route(); });
  await route();
}
start().catch((e) => { $("#view").replaceChildren(h("p", { class: "hold" }, `cannot start: ${e.message}`)); });
