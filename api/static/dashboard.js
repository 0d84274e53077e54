// pipewave dashboard: a single static page, vanilla JS (ES2020), no build step.
// Talks to the REST/SSE API described in docs/api.md. All text from the server is
// inserted with textContent / text nodes (never innerHTML).
"use strict";

(() => {
  // ---------------------------------------------------------------- constants
  const API = "/api/v1";
  const POLL_MS = 2000;                 // jobs list, cluster and job re-fetch period
  const RENDER_MIN_MS = 250;            // at most ~4 chart renders per second
  const MAX_EVENTS_SHOWN = 200;
  const MAX_EVENTS_KEPT = 1000;
  const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
  // stored event kinds (docs/api.md); "metrics" and "timeline" are handled apart
  const EVENT_KINDS = ["state", "plan", "info", "calibration", "rebalance", "membership",
    "elastic", "recovery", "checkpoint", "error", "service"];
  const HIGHLIGHT_KINDS = new Set(["rebalance", "recovery", "error"]);
  const AUTH_MESSAGE = "Not signed in: open /login?token=YOUR_TOKEN";
  const CHUNK_SHADES = 4;               // colour shades per span kind for chunks (then they repeat)

  const app = document.getElementById("app");
  const banner = document.getElementById("banner");

  // ---------------------------------------------------------------- DOM helpers
  const SVG_NS = "http://www.w3.org/2000/svg";

  // Sets attributes (null/false skipped; "on*" functions become listeners) and
  // appends children (strings become text nodes, so they are always escaped).
  function build(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const svgEl = (tag, attrs, ...children) =>
    build(document.createElementNS(SVG_NS, tag), attrs, children);

  // ---------------------------------------------------------------- formatting
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const dash = "–";

  function fmtLoss(v) {
    if (!isNum(v)) return dash;
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
  }
  function fmtRate(v) {
    return isNum(v) ? v.toFixed(1) : dash;
  }
  function relTime(t) {
    if (!isNum(t)) return dash;
    const s = Date.now() / 1000 - t;
    if (s < 5) return "just now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  function absTime(t) {
    return isNum(t) ? new Date(t * 1000).toLocaleString() : "";
  }
  function clockTime(t) {
    if (!isNum(t)) return dash;
    const d = new Date(t * 1000);
    const time = d.toLocaleTimeString([], { hour12: false });
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? time : `${d.toLocaleDateString()} ${time}`;
  }
  const shortId = (id) => (id ? String(id).slice(0, 8) : dash);
  // layers [a, b) are shown inclusive: "a–(b-1)"
  function layerRange(layers) {
    if (!Array.isArray(layers) || layers.length < 2) return dash;
    return `${layers[0]}–${layers[1] - 1}`;
  }
  // a stage's chunks ([[a, b), ...] in chunk order); data without them: one chunk, its layers
  function stageChunks(p) {
    if (Array.isArray(p.chunks) && p.chunks.length) return p.chunks;
    return Array.isArray(p.layers) ? [p.layers] : [];
  }
  // a chunk's layers: "a–(b-1)", or "a" for one layer
  function chunkRange(c) {
    return Array.isArray(c) && c.length === 2 && c[1] - c[0] === 1 ? String(c[0]) : layerRange(c);
  }
  const chunkShade = (chunk) => `c${chunk % CHUNK_SHADES}`;

  // Returns a function that runs fn at most once per `ms` (trailing call kept).
  function throttle(fn, ms) {
    let last = 0;
    let timer = null;
    const schedule = () => {
      if (timer) return;
      const wait = Math.max(0, last + ms - Date.now());
      timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
    };
    schedule.cancel = () => { clearTimeout(timer); timer = null; };
    return schedule;
  }

  // ---------------------------------------------------------------- banner
  // One line per key ("auth", "net"); the banner hides when all are cleared.
  const bannerLines = new Map();
  function setBanner(key, message) {
    if (message) bannerLines.set(key, message); else bannerLines.delete(key);
    banner.replaceChildren(...[...bannerLines.values()].map((m) => el("div", {}, m)));
    banner.hidden = bannerLines.size === 0;
    banner.classList.toggle("banner-auth", bannerLines.has("auth"));
  }

  // ---------------------------------------------------------------- API client
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail || `HTTP ${status}`);
      this.status = status;
    }
  }

  // fetch() with the cookie; JSON in and out; 401 shows the sign-in message.
  async function api(path, options = {}) {
    let res;
    try {
      res = await fetch(API + path, { credentials: "same-origin", ...options });
    } catch (err) {
      setBanner("net", "Cannot reach the pipewave server (retrying).");
      throw new ApiError(0, "network error");
    }
    setBanner("net", null);
    if (res.status === 401) {
      setBanner("auth", AUTH_MESSAGE);
      throw new ApiError(401, AUTH_MESSAGE);
    }
    setBanner("auth", null);
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, detail);
    }
    return res.status === 204 ? null : res.json();
  }
  const jobPath = (id) => `/jobs/${encodeURIComponent(id)}`;

  // ---------------------------------------------------------------- shared widgets
  function stateBadge(state, attrs = {}) {
    const s = String(state || "UNKNOWN");
    return el("span", { ...attrs, class: `badge state-${s.toLowerCase()}` }, s);
  }
  function progressBar(progress) {
    const pct = isNum(progress) ? Math.max(0, Math.min(1, progress)) * 100 : 0;
    return el("span", { class: "progress", title: `${pct.toFixed(1)} %` },
      el("span", { class: "progress-fill", style: `width:${pct.toFixed(1)}%` }));
  }
  const stepText = (job) => `${isNum(job.step) ? job.step : 0}/${isNum(job.steps) ? job.steps : dash}`;
  const nodeLabel = (id) => el("code", { class: "node-id", title: id || "" }, shortId(id));

  // ---------------------------------------------------------------- router
  let current = null; // the mounted page: { cleanup() }
  function route() {
    if (current) current.cleanup();
    app.replaceChildren();
    const m = (location.hash || "#/").match(/^#\/jobs\/([^/?#]+)\/?$/);
    current = m ? mountJobPage(decodeURIComponent(m[1])) : mountJobsPage();
    window.scrollTo(0, 0);
  }

  // ================================================================ jobs page
  const JOB_COLUMNS = ["Name", "ID", "State", "Progress", "Loss", "Samples/s", "Stages", "Created"];

  function mountJobsPage() {
    document.title = "pipewave · jobs";
    const tbody = el("tbody", {}, el("tr", {}, el("td", { colspan: 8, class: "muted" }, "Loading…")));
    const count = el("span", { class: "muted small" });
    const cluster = el("div", { id: "cluster", class: "cluster-body" }, el("span", { class: "muted" }, "Loading…"));
    app.append(
      el("section", { class: "card" }, el("h2", {}, "Cluster"), cluster),
      el("section", { class: "card" },
        el("div", { class: "card-head" }, el("h2", {}, "Jobs"), count),
        el("div", { class: "table-wrap" },
          el("table", { id: "jobs-table", class: "table" },
            el("thead", {}, el("tr", {}, JOB_COLUMNS.map((c) => el("th", {}, c)))), tbody))));

    let stopped = false;
    let busy = false;
    async function refresh() {
      if (busy) return;
      busy = true;
      await Promise.allSettled([
        api("/jobs?limit=100").then((list) => { if (!stopped) renderJobs(tbody, count, list); }),
        api("/cluster").then((c) => { if (!stopped) renderCluster(cluster, c); }),
      ]);
      busy = false;
    }
    refresh();
    const timer = setInterval(refresh, POLL_MS);
    return { cleanup() { stopped = true; clearInterval(timer); } };
  }

  function renderJobs(tbody, count, list) {
    const items = list.items || [];
    count.textContent = `${items.length} of ${list.total ?? items.length}`;
    if (!items.length) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No jobs yet.")));
      return;
    }
    tbody.replaceChildren(...items.map(jobRow));
  }

  function jobRow(job) {
    const queued = job.state === "QUEUED" && isNum(job.queue_position);
    return el("tr", { "data-job-id": job.id },
      el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name || job.id)),
      el("td", {}, el("code", {}, job.id)),
      el("td", {}, stateBadge(job.state),
        queued ? el("span", { class: "muted small" }, ` #${job.queue_position + 1} in queue`) : null),
      el("td", { class: "nowrap" }, progressBar(job.progress), " ", el("span", { class: "small" }, stepText(job))),
      el("td", { class: "num" }, fmtLoss(job.loss)),
      el("td", { class: "num" }, fmtRate(job.samples_per_s)),
      el("td", { class: "num" }, job.stages ?? dash),
      el("td", { class: "nowrap", title: absTime(job.created_at) }, relTime(job.created_at)));
  }

  function renderCluster(box, c) {
    const slots = c.slots || {};
    const nodes = c.nodes || [];
    const summary = el("div", { class: "stats" },
      stat("Slots free/total", `${slots.free ?? dash}/${slots.total ?? dash}`),
      stat("Nodes", `${nodes.filter((n) => n.state === "ALIVE").length} alive / ${nodes.length}`),
      stat("CPUs per stage", slots.cpus_per_stage ?? dash),
      stat("Stages placed", (c.stages || []).length));
    const rows = nodes.map((n) => el("tr", { "data-node-id": n.node_id },
      el("td", {}, nodeLabel(n.node_id)),
      el("td", {}, el("span", { class: `badge node-${String(n.state).toLowerCase()}` }, n.state)),
      el("td", {}, n.address || dash),
      el("td", { class: "num" }, n.cpus ?? dash),
      el("td", { class: "num" }, n.available_cpus ?? dash),
      el("td", { class: "num" }, n.slots ?? dash)));
    const table = el("table", { class: "table compact", id: "nodes-table" },
      el("thead", {}, el("tr", {}, ["Node", "State", "Address", "CPUs", "Available CPUs", "Slots"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No nodes."))));
    box.replaceChildren(summary, el("div", { class: "table-wrap" }, table));
  }

  function stat(label, value) {
    return el("div", { class: "stat" }, el("div", { class: "stat-label" }, label),
      el("div", { class: "stat-value" }, String(value)));
  }

  // ================================================================ job page
  function mountJobPage(id) {
    document.title = `pipewave · ${id}`;
    const st = {
      id, job: null, stopped: false, terminal: false,
      points: new Map(),           // step -> StepPoint
      events: [], seqs: new Set(), // stored events, deduped by seq
      timeline: null, es: null, reopenTimer: null, timers: [], started: false,
    };
    const ui = buildJobSkeleton(st);

    const renderCharts = throttle(() => { if (!st.stopped) drawCharts(st, ui); }, RENDER_MIN_MS);
    const renderEvents = throttle(() => { if (!st.stopped) drawEvents(st, ui); }, RENDER_MIN_MS);
    const refreshSoon = throttle(() => refreshJob(), 1000);
    const onResize = throttle(() => { drawCharts(st, ui); drawTimeline(st, ui); }, RENDER_MIN_MS);
    Object.assign(st, { renderCharts, renderEvents, refreshSoon });
    window.addEventListener("resize", onResize);

    // -- job header: re-fetched every 2 s until the job is terminal
    async function refreshJob() {
      if (st.stopped) return;
      try {
        const job = await api(jobPath(id));
        if (st.stopped) return;
        applyJob(st, ui, job);
        if (!st.started) startLive(); // first successful load (retried by the poll)
      } catch (err) {
        if (err.status === 404) showMissing(st, ui);
      }
    }
    st.refreshJob = refreshJob;

    // -- metrics (full history), then the live event stream
    async function loadMetrics() {
      try {
        const res = await api(`${jobPath(id)}/metrics`);
        for (const p of res.items || []) if (isNum(p.step)) st.points.set(p.step, p);
        renderCharts();
      } catch (_) { /* banner / next poll shows it */ }
    }
    st.loadMetrics = loadMetrics;

    async function loadTimeline() {
      try {
        st.timeline = await api(`${jobPath(id)}/timeline`);
        if (!st.stopped) drawTimeline(st, ui);
      } catch (_) { /* keep the last one */ }
    }
    st.loadTimeline = loadTimeline;

    ui.cancelBtn.addEventListener("click", () => cancelJob(st, ui));

    // timeline once, metrics history, then the live event stream
    async function startLive() {
      st.started = true;
      loadTimeline();
      await loadMetrics();
      if (!st.stopped) openStream(st, ui);
    }

    refreshJob();
    drawCharts(st, ui);
    drawTimeline(st, ui);
    st.timers.push(setInterval(() => { if (!st.terminal) refreshJob(); }, POLL_MS));

    return {
      cleanup() {
        st.stopped = true;
        st.timers.forEach(clearInterval);
        clearTimeout(st.reopenTimer);
        [renderCharts, renderEvents, refreshSoon, onResize].forEach((f) => f.cancel());
        window.removeEventListener("resize", onResize);
        closeStream(st);
      },
    };
  }

  // Builds the job page's fixed layout once; later renders update its parts.
  function buildJobSkeleton(st) {
    const ui = {
      name: el("h1", { class: "job-name" }, st.id),
      jobId: el("code", { class: "muted" }, st.id),
      model: el("div", { id: "job-model", class: "job-model small", hidden: true }),
      state: stateBadge("…", { id: "job-state" }),
      phase: el("span", { class: "phase" }),
      reason: el("p", { class: "reason" }),
      progress: el("div", { class: "job-progress" }),
      stats: el("div", { class: "stats" }),
      cancelBtn: el("button", { id: "cancel-btn", class: "btn btn-danger", type: "button", hidden: true }, "Cancel job"),
      cancelMsg: el("span", { class: "small error-text" }),
      lossChart: svgEl("svg", { id: "loss-chart", class: "chart", "data-points": 0, role: "img", "aria-label": "loss vs step" }),
      rateChart: svgEl("svg", { id: "throughput-chart", class: "chart", "data-points": 0, role: "img", "aria-label": "samples per second vs step" }),
      stageMap: el("div", { id: "stage-map", class: "stage-map" }),
      timeline: svgEl("svg", { id: "timeline", class: "timeline", role: "img", "aria-label": "pipeline timeline" }),
      timelineInfo: el("span", { class: "muted small" }),
      chunkLegend: el("span", { id: "chunk-legend", class: "legend small", hidden: true }),
      events: el("ul", { id: "events", class: "events" }),
      eventCount: el("span", { class: "muted small" }),
      streamStatus: el("span", { id: "stream-status", class: "stream-status small" }, "connecting…"),
    };
    const legend = el("span", { class: "legend small" },
      el("span", { class: "swatch swatch-F" }), "forward (F)",
      el("span", { class: "swatch swatch-B" }), "backward (B)",
      el("span", { class: "swatch swatch-idle" }), "idle (bubble)");
    app.append(
      el("p", { class: "crumbs small" }, el("a", { href: "#/" }, "← all jobs")),
      el("section", { class: "card job-header" },
        el("div", { class: "job-title" }, ui.name, ui.state, ui.phase,
          el("span", { class: "spacer" }), ui.cancelMsg, ui.cancelBtn),
        el("div", { class: "muted small" }, ui.jobId),
        ui.model,
        ui.reason, ui.progress, ui.stats),
      el("div", { class: "grid-2" },
        el("section", { class: "card" }, el("h2", {}, "Loss"), el("div", { class: "chart-box" }, ui.lossChart)),
        el("section", { class: "card" }, el("h2", {}, "Throughput (samples/s)"), el("div", { class: "chart-box" }, ui.rateChart))),
      el("section", { class: "card" }, el("h2", {}, "Stages → nodes"), ui.stageMap),
      el("section", { class: "card" },
        el("div", { class: "card-head" }, el("h2", {}, "Pipeline timeline"), ui.timelineInfo, el("span", { class: "spacer" }),
          legend, ui.chunkLegend),
        el("div", { class: "chart-box", id: "timeline-box" }, ui.timeline)),
      el("section", { class: "card" },
        el("div", { class: "card-head" }, el("h2", {}, "Events"), ui.eventCount, el("span", { class: "spacer" }), ui.streamStatus),
        ui.events));
    return ui;
  }

  function showMissing(st, ui) {
    st.missing = true;
    st.terminal = true;
    closeStream(st);
    ui.reason.textContent = `No such job: ${st.id}`;
    ui.reason.classList.add("error-text");
    ui.state.textContent = "NOT FOUND";
  }

  // ---------------------------------------------------------------- header
  function applyJob(st, ui, job) {
    const wasTerminal = st.terminal;
    const hadJob = st.job !== null;
    st.job = job;
    document.title = `pipewave · ${job.name}`;
    ui.name.textContent = job.name || job.id;
    ui.jobId.textContent = job.id;
    ui.state.textContent = job.state;
    ui.state.className = `badge state-${String(job.state).toLowerCase()}`;
    ui.phase.textContent = job.phase && job.phase !== job.state ? `phase ${job.phase}` : "";
    ui.reason.textContent = job.reason || "";
    ui.progress.replaceChildren(progressBar(job.progress), " ",
      el("span", {}, `step ${stepText(job)}`),
      el("span", { class: "muted" }, isNum(job.progress) ? ` (${(job.progress * 100).toFixed(1)} %)` : ""));
    ui.stats.replaceChildren(...[
      stat("Loss", fmtLoss(job.loss)),
      stat("Samples/s", fmtRate(job.samples_per_s)),
      stat("Stages × microbatches", `${job.stages ?? dash} × ${job.microbatches ?? dash}`),
      job.state === "QUEUED" && isNum(job.queue_position) ? stat("Queue position", job.queue_position + 1) : null,
      stat("Slots", job.slots ?? dash),
      stat("Checkpoint step", job.checkpoint_step ?? dash),
      stat("Created", relTime(job.created_at)),
      stat(job.finished_at ? "Finished" : "Started", relTime(job.finished_at || job.started_at)),
    ].filter(Boolean));
    const terminal = TERMINAL.has(job.state);
    ui.cancelBtn.hidden = terminal;
    if (!st.cancelling) {
      ui.cancelBtn.disabled = Boolean(job.cancel_requested);
      ui.cancelBtn.textContent = job.cancel_requested ? "Cancel requested" : "Cancel job";
    }
    drawModel(ui.model, job);
    drawStageMap(ui.stageMap, job.placement || []);
    if (terminal && !wasTerminal) {
      if (hadJob) onTerminal(st, ui); // ended while we watched: reload final figures
      else st.terminal = true;         // already ended on load: the first loads suffice
    }
  }

  // POST .../cancel with the CSRF header the server requires for cookie auth.
  async function cancelJob(st, ui) {
    st.cancelling = true;
    ui.cancelBtn.disabled = true;
    ui.cancelBtn.textContent = "Cancelling…";
    ui.cancelMsg.textContent = "";
    try {
      const job = await api(`${jobPath(st.id)}/cancel`, {
        method: "POST", headers: { "X-Pipewave-Request": "1" },
      });
      st.cancelling = false;
      if (!st.stopped) applyJob(st, ui, job);
    } catch (err) {
      st.cancelling = false;
      ui.cancelBtn.disabled = false;
      ui.cancelBtn.textContent = "Cancel job";
      ui.cancelMsg.textContent = `Cancel failed: ${err.message}`;
    }
  }

  // The job ended: final metrics (live points get replaced) and timeline.
  function onTerminal(st, ui) {
    st.terminal = true;
    ui.streamStatus.textContent = "job ended";
    st.loadMetrics();
    st.loadTimeline();
  }

  // ---------------------------------------------------------------- SSE stream
  function openStream(st, ui) {
    closeStream(st);
    const es = new EventSource(`${API}${jobPath(st.id)}/events`);
    st.es = es;
    const onStored = (ev) => handleStoredEvent(st, ui, ev);
    for (const kind of EVENT_KINDS) es.addEventListener(kind, onStored);
    es.addEventListener("message", onStored); // events without a known name
    es.addEventListener("metrics", (ev) => handleMetrics(st, ev));
    es.addEventListener("timeline", () => st.loadTimeline());
    es.addEventListener("open", () => { ui.streamStatus.textContent = "live"; });
    es.addEventListener("error", (ev) => {
      // a server-sent "event: error" is a MessageEvent: that is a stored event, not a failure
      if (ev instanceof MessageEvent) return;
      handleStreamError(st, ui);
    });
  }

  function closeStream(st) {
    if (st.es) st.es.close();
    st.es = null;
  }

  function handleStreamError(st, ui) {
    if (st.stopped) return;
    if (st.terminal) {            // the stream ends with the job: don't reconnect
      closeStream(st);
      ui.streamStatus.textContent = "job ended";
      return;
    }
    if (st.es && st.es.readyState === EventSource.CLOSED) {
      // the browser gave up (e.g. an HTTP error): open a new stream later
      ui.streamStatus.textContent = "disconnected, retrying…";
      clearTimeout(st.reopenTimer);
      st.reopenTimer = setTimeout(() => { if (!st.stopped && !st.terminal) openStream(st, ui); }, 5000);
    } else {
      ui.streamStatus.textContent = "reconnecting…"; // EventSource retries with Last-Event-ID
    }
  }

  function parseData(ev) {
    try { return JSON.parse(ev.data); } catch (_) { return null; }
  }

  // "metrics": data is a StepPoint (or an event envelope whose data is one).
  function handleMetrics(st, ev) {
    const msg = parseData(ev);
    const point = msg && isNum(msg.step) ? msg : msg && msg.data;
    if (!point || !isNum(point.step)) return;
    st.points.set(point.step, point); // same step: replaced
    st.renderCharts();
    st.refreshSoon(); // the header's step, loss and throughput follow the live points
  }

  function handleStoredEvent(st, ui, ev) {
    if (!(ev instanceof MessageEvent) || typeof ev.data !== "string") return;
    const msg = parseData(ev);
    if (!msg || typeof msg !== "object") return;
    const seq = isNum(msg.seq) ? msg.seq : Number(ev.lastEventId);
    if (Number.isFinite(seq)) {
      if (st.seqs.has(seq)) return; // replayed after a reconnect
      st.seqs.add(seq);
    }
    const event = { seq, time: msg.time, kind: msg.kind || ev.type, message: msg.message || "", data: msg.data || {} };
    st.events.push(event);
    if (st.events.length > MAX_EVENTS_KEPT) st.events.splice(0, st.events.length - MAX_EVENTS_KEPT);
    st.renderEvents();
    if (event.kind === "state" && TERMINAL.has(event.data.state)) {
      closeStream(st); // the server ends the stream after this event
      ui.streamStatus.textContent = "job ended";
      st.refreshJob();
      if (!st.terminal) onTerminal(st, ui);
    } else if (["state", "rebalance", "plan", "info", "recovery", "checkpoint"].includes(event.kind)) {
      st.refreshSoon();
    }
  }

  // ---------------------------------------------------------------- events list
  function drawEvents(st, ui) {
    const sorted = [...st.events].sort((a, b) => (b.seq - a.seq) || (b.time - a.time));
    const shown = sorted.slice(0, MAX_EVENTS_SHOWN);
    ui.eventCount.textContent = sorted.length > shown.length
      ? `newest ${shown.length} of ${sorted.length}` : `${sorted.length}`;
    if (!shown.length) {
      ui.events.replaceChildren(el("li", { class: "muted" }, "No events yet."));
      return;
    }
    ui.events.replaceChildren(...shown.map(eventItem));
  }

  function eventItem(e) {
    const failed = e.kind === "state" && e.data && e.data.state === "FAILED";
    const hl = failed || HIGHLIGHT_KINDS.has(e.kind);
    const cls = `event kind-${String(e.kind).replace(/[^a-z0-9_-]/gi, "")}${hl ? " highlight" : ""}${failed || e.kind === "error" ? " bad" : ""}`;
    return el("li", { class: cls, "data-seq": Number.isFinite(e.seq) ? e.seq : null, "data-kind": e.kind },
      el("span", { class: "event-time", title: absTime(e.time) }, clockTime(e.time)),
      el("span", { class: "event-kind" }, e.kind),
      el("span", { class: "event-msg" }, e.message));
  }

  // ---------------------------------------------------------------- model
  // The job's model: architecture, kind, parameters (1.2M) and layers; from the spec's kind alone
  // when the server has no model_info for it.
  function drawModel(box, job) {
    const info = job.model_info || null;
    const kind = info ? info.kind : job.spec && job.spec.model && job.spec.model.kind;
    box.hidden = !kind;
    if (!kind) return;
    const parts = [];
    if (info) {
      parts.push(el("strong", { id: "model-architecture" }, info.architecture), " ");
    }
    parts.push(el("span", { id: "model-kind", class: "badge model-kind" }, kind));
    if (info && isNum(info.parameters)) {
      parts.push(" · ", el("span", { id: "model-parameters", title: `${info.parameters.toLocaleString()} parameters`,
        "data-parameters": info.parameters }, `${fmtCount(info.parameters)} parameters`));
    }
    if (info && isNum(info.layers)) {
      parts.push(" · ", el("span", { id: "model-layers", "data-layers": info.layers },
        `${info.layers} layer${info.layers === 1 ? "" : "s"}`));
    }
    box.replaceChildren("model ", ...parts);
  }

  // 1234 -> "1.2K", 1234567 -> "1.2M", 7e9 -> "7.0B"; below 1000 as it is
  function fmtCount(n) {
    for (const [size, unit] of [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
      if (Math.abs(n) >= size) return `${(n / size).toFixed(1)}${unit}`;
    }
    return String(n);
  }

  // ---------------------------------------------------------------- stage map
  function drawStageMap(box, placement) {
    if (!placement.length) {
      box.replaceChildren(el("p", { class: "muted" }, "Not placed yet."));
      return;
    }
    const sorted = [...placement].sort((a, b) => a.stage - b.stage);
    box.replaceChildren(...sorted.map((p) => {
      const names = p.layer_names || [];
      const chunks = stageChunks(p);
      if (chunks.length > 1) return chunkedStage(p, chunks, names);
      const n = Array.isArray(p.layers) && p.layers.length === 2 ? p.layers[1] - p.layers[0] : names.length;
      return el("div", { class: "stage", "data-stage": p.stage },
        el("div", { class: "stage-head" }, el("strong", {}, `stage ${p.stage}`),
          el("span", { class: "muted small" }, p.device || "")),
        el("div", {}, "layers ", el("strong", { class: "layer-range" }, layerRange(p.layers)),
          el("span", { class: "muted small" }, ` (${n} layer${n === 1 ? "" : "s"})`)),
        el("div", { class: "small" }, "node ", nodeLabel(p.node_id)),
        el("div", { class: "layer-names small", title: names.join(", ") }, names.join(", ") || dash));
    }));
  }

  // A stage worker holding several chunks: each chunk's layer range, and its layers' names
  // (layer_names lists all the worker's layers in chunk order).
  function chunkedStage(p, chunks, names) {
    const sizes = chunks.map((c) => (Array.isArray(c) && c.length === 2 ? Math.max(0, c[1] - c[0]) : 0));
    const n = sizes.reduce((a, b) => a + b, 0);
    let at = 0;
    const lines = chunks.map((c, k) => {
      const mine = names.length >= n ? names.slice(at, at + sizes[k]) : [];
      at += sizes[k];
      return el("div", { class: "chunk-names", "data-chunk": k, title: mine.join(", ") },
        el("span", { class: `chunk-tag chunk-tag-${chunkShade(k)}` }, `c${k}`), " ",
        mine.join(", ") || chunkRange(c));
    });
    return el("div", { class: "stage", "data-stage": p.stage, "data-chunks": chunks.length },
      el("div", { class: "stage-head" }, el("strong", {}, `stage ${p.stage}`),
        el("span", { class: "muted small" }, p.device || "")),
      el("div", {}, "layers ", el("strong", { class: "layer-range" }, chunks.map(chunkRange).join(", ")),
        el("span", { class: "muted small" }, ` (${n} layer${n === 1 ? "" : "s"} in ${chunks.length} chunks)`)),
      el("div", { class: "small" }, "node ", nodeLabel(p.node_id)),
      el("div", { class: "layer-names small" }, lines));
  }

  // ---------------------------------------------------------------- line charts
  // "Nice" tick values covering [min, max] (1/2/5 x 10^k steps).
  function niceTicks(min, max, count, integer = false) {
    const raw = (max - min) / Math.max(1, count);
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    const norm = raw / mag;
    let step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
    if (integer) step = Math.max(1, Math.round(step));
    const lo = Math.floor(min / step + 1e-9) * step;
    const hi = Math.ceil(max / step - 1e-9) * step;
    const ticks = [];
    for (let v = lo; v <= hi + step * 1e-6; v += step) ticks.push(Number(v.toPrecision(12)));
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return { ticks, lo, hi, fmt: (v) => v.toFixed(Math.min(decimals, 6)) };
  }

  function chartWidth(svg, fallback) {
    const w = svg.parentElement ? svg.parentElement.clientWidth : 0;
    return Math.max(280, Math.floor(w || fallback));
  }

  function drawCharts(st, ui) {
    const pts = [...st.points.values()].sort((a, b) => a.step - b.step);
    drawLineChart(ui.lossChart, pts, "loss", "line-loss");
    drawLineChart(ui.rateChart, pts, "samples_per_s", "line-rate");
  }

  function drawLineChart(svg, allPoints, key, lineClass) {
    const W = chartWidth(svg, 560);
    const H = 240;
    const m = { l: 58, r: 16, t: 12, b: 36 };
    const pw = W - m.l - m.r;
    const ph = H - m.t - m.b;
    const data = allPoints.filter((p) => isNum(p[key]));
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("data-points", data.length);
    const parts = [svgEl("rect", { class: "plot-bg", x: m.l, y: m.t, width: pw, height: ph })];
    if (!data.length) {
      parts.push(svgEl("text", { class: "chart-empty", x: m.l + pw / 2, y: m.t + ph / 2, "text-anchor": "middle" }, "waiting for data…"));
      svg.replaceChildren(...parts);
      return;
    }
    // scales
    let x0 = data[0].step;
    let x1 = data[data.length - 1].step;
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    let y0 = Math.min(...data.map((p) => p[key]));
    let y1 = Math.max(...data.map((p) => p[key]));
    if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const yt = niceTicks(y0, y1, 5);
    const xt = niceTicks(x0, x1, Math.max(2, Math.floor(pw / 80)), true);
    const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * pw;
    const sy = (v) => m.t + ph - ((v - yt.lo) / (yt.hi - yt.lo)) * ph;
    // grid + y ticks
    for (const v of yt.ticks) {
      const y = sy(v);
      parts.push(svgEl("line", { class: "grid", x1: m.l, x2: m.l + pw, y1: y, y2: y }),
        svgEl("text", { class: "tick", x: m.l - 6, y: y + 4, "text-anchor": "end" }, yt.fmt(v)));
    }
    // x ticks (only those inside the data range)
    for (const v of xt.ticks.filter((t) => t >= x0 && t <= x1)) {
      const x = sx(v);
      parts.push(svgEl("line", { class: "tick-mark", x1: x, x2: x, y1: m.t + ph, y2: m.t + ph + 5 }),
        svgEl("text", { class: "tick", x, y: m.t + ph + 18, "text-anchor": "middle" }, String(v)));
    }
    parts.push(
      svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }),
      svgEl("line", { class: "axis", x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }),
      svgEl("text", { class: "axis-label", x: m.l + pw / 2, y: H - 4, "text-anchor": "middle" }, "step"));
    // line + points
    const d = data.map((p, i) => `${i ? "L" : "M"}${sx(p.step).toFixed(1)},${sy(p[key]).toFixed(1)}`).join("");
    parts.push(svgEl("path", { class: `line ${lineClass}`, d }));
    const r = data.length > 150 ? 1.2 : 2.5;
    const fmt = key === "loss" ? fmtLoss : fmtRate;
    for (const p of data) {
      parts.push(svgEl("circle", { class: `point ${lineClass}`, cx: sx(p.step).toFixed(1), cy: sy(p[key]).toFixed(1), r, "data-step": p.step },
        svgEl("title", {}, `step ${p.step}: ${fmt(p[key])}`)));
    }
    svg.replaceChildren(...parts);
  }

  // ---------------------------------------------------------------- Gantt timeline
  function drawTimeline(st, ui) {
    const svg = ui.timeline;
    const tl = st.timeline || { stages: 0, spans: [], duration_s: 0, steps: [] };
    const spans = tl.spans || [];
    const maxStage = spans.reduce((mx, s) => Math.max(mx, s.stage), -1);
    // chunks (virtual stages) per stage worker: several are told apart by shade, label and legend
    const nChunks = Math.max(isNum(tl.chunks_per_stage) ? tl.chunks_per_stage : 1,
      spans.reduce((mx, s) => Math.max(mx, isNum(s.chunk) ? s.chunk + 1 : 1), 1));
    const chunked = nChunks > 1;
    const nStages = Math.max(tl.stages || 0, maxStage + 1, spans.length ? 0 : (st.job && st.job.stages) || 0);
    const W = chartWidth(svg, 1100);
    const m = { l: 70, r: 70, t: 20, b: 34 };
    const rowH = 26;
    const gap = 8;
    const pw = W - m.l - m.r;
    const H = m.t + Math.max(1, nStages) * (rowH + gap) + m.b;
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("data-spans", spans.length);
    const steps = Array.isArray(tl.steps) && tl.steps.length === 2 ? `steps ${tl.steps[0]}–${tl.steps[1]}` : "";
    ui.timelineInfo.textContent = spans.length
      ? `${steps}, ${(tl.duration_s * 1000).toFixed(1)} ms${chunked ? `, ${nChunks} chunks per stage` : ""}` : "";
    drawChunkLegend(ui.chunkLegend, chunked ? nChunks : 0);

    const dur = Math.max(tl.duration_s || 0, ...spans.map((s) => s.end), 0) || 1;
    const sx = (t) => m.l + (t / dur) * pw;
    const parts = [];
    const plotBottom = m.t + Math.max(1, nStages) * (rowH + gap);

    // a dashed line + label where each step starts (its earliest span)
    const stepStart = new Map();
    for (const s of spans) stepStart.set(s.step, Math.min(stepStart.get(s.step) ?? Infinity, s.start));
    for (const [step, t] of [...stepStart.entries()].sort((a, b) => a[0] - b[0])) {
      parts.push(svgEl("line", { class: "step-line", x1: sx(t), x2: sx(t), y1: m.t - 4, y2: plotBottom }),
        svgEl("text", { class: "tick step-label", x: sx(t) + 3, y: m.t - 6 }, `step ${step}`));
    }
    // one row per stage
    for (let stage = 0; stage < nStages; stage++) {
      const y = m.t + stage * (rowH + gap);
      const mine = spans.filter((s) => s.stage === stage);
      const busy = mine.reduce((sum, s) => sum + Math.max(0, s.end - s.start), 0);
      const pct = tl.duration_s > 0 ? `${((busy / tl.duration_s) * 100).toFixed(0)} % busy` : dash;
      const row = svgEl("g", { class: "stage-row", "data-stage": stage },
        svgEl("rect", { class: "lane", x: m.l, y, width: pw, height: rowH }),
        svgEl("text", { class: "row-label", x: m.l - 8, y: y + rowH / 2 + 4, "text-anchor": "end" }, `stage ${stage}`),
        svgEl("text", { class: "row-busy", x: W - m.r + 8, y: y + rowH / 2 + 4 }, pct));
      for (const s of mine) row.append(...spanRect(s, sx, y, rowH, chunked));
      parts.push(row);
    }
    if (!spans.length) {
      parts.push(svgEl("text", { class: "chart-empty", x: m.l + pw / 2, y: m.t + 18, "text-anchor": "middle" },
        "No timeline yet (it is ready once the first steps of a run finish)."));
    }
    // time axis in ms
    if (!spans.length) { svg.replaceChildren(...parts); return; }
    const xt = niceTicks(0, dur * 1000, Math.max(2, Math.floor(pw / 90)));
    for (const v of xt.ticks.filter((t) => t <= dur * 1000 + 1e-9)) {
      const x = sx(v / 1000);
      parts.push(svgEl("line", { class: "tick-mark", x1: x, x2: x, y1: plotBottom, y2: plotBottom + 5 }),
        svgEl("text", { class: "tick", x, y: plotBottom + 17, "text-anchor": "middle" }, xt.fmt(v)));
    }
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: m.l + pw, y1: plotBottom, y2: plotBottom }),
      svgEl("text", { class: "axis-label", x: m.l + pw / 2, y: H - 3, "text-anchor": "middle" }, "time (ms)"));
    svg.replaceChildren(...parts);
  }

  // One entry per chunk (its F and B shades) when stages hold several; hidden otherwise.
  function drawChunkLegend(box, nChunks) {
    box.hidden = nChunks < 2;
    const keys = [];
    for (let k = 0; k < nChunks; k++) {
      keys.push(el("span", { class: "chunk-key", "data-chunk": k },
        el("span", { class: `swatch swatch-F swatch-${chunkShade(k)}` }),
        el("span", { class: `swatch swatch-B swatch-pair swatch-${chunkShade(k)}` }),
        el("span", { class: "chunk-key-text" }, `chunk ${k}`)));
    }
    box.replaceChildren(...keys);
  }

  // A span's rect (+ its microbatch number when wide enough), as direct children of the row.
  // With several chunks per stage the chunk picks the shade and shows in the label ("3c1": mb 3
  // on chunk 1) and the tooltip.
  function spanRect(s, sx, y, rowH, chunked) {
    const kind = s.kind === "B" ? "B" : "F";
    const chunk = isNum(s.chunk) ? s.chunk : 0;
    const shade = chunked ? ` span-${chunkShade(chunk)}` : "";
    const x = sx(s.start);
    const w = Math.max(1, sx(s.end) - x);
    const rect = svgEl("rect", { class: `span span-${kind}${shade}`, x: x.toFixed(2), y: y + 2, width: w.toFixed(2),
      height: rowH - 4, rx: 2, "data-microbatch": s.microbatch, "data-step": s.step,
      "data-chunk": chunked ? chunk : null },
    svgEl("title", {}, `${kind === "F" ? "forward" : "backward"} mb ${s.microbatch}` +
      `${chunked ? `, chunk ${chunk}` : ""}, step ${s.step}: ` +
      `${(s.start * 1000).toFixed(1)}–${(s.end * 1000).toFixed(1)} ms`));
    const label = chunked ? `${s.microbatch}c${chunk}` : String(s.microbatch);
    if (w < label.length * 7 + 4) return [rect];
    return [rect, svgEl("text", { class: `span-label span-label-${kind}${shade}`, x: (x + w / 2).toFixed(2),
      y: y + rowH / 2 + 4, "text-anchor": "middle" }, label)];
  }

  // ---------------------------------------------------------------- start
  window.addEventListener("hashchange", route);
  route();
})();
