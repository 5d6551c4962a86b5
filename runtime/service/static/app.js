// The conveyor dashboard: jobs with live progress, bytes, rate and ETA (Server-Sent
// Events read through fetch, so the token travels in a header, never in a url); for the
// job shown, a throughput chart, failures by kind, hosts, the failed items and the
// completed files; cancel / pause / resume / delete. The token is kept in this tab's
// sessionStorage only. Rows are updated in place, never rebuilt, so scripts and screen
// readers keep their place.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const WINDOW_S = 300;    // the chart shows at most the last five minutes of a job
const SMOOTH_S = 2;      // each point of the chart is the rate over up to 2 s
const GAP_S = 30;        // no progress event for this long (paused, restarted): a break
const PAGE_SIZE = 20;    // failed items and files per page
// Browsers open at most 6 HTTP/1.1 connections to one origin: more event streams than
// this would leave none for the API calls. The other jobs are updated by polling.
const MAX_STREAMS = 4;
const MAX_JOB_PAGES = 10;  // 10,000 jobs: the list stops there

const jobs = new Map();      // job id -> last known job document
const streams = new Map();   // job id -> AbortController of its event stream
// job id -> [{ts, done, bytes, elapsed, run}] from its progress events: bytes and elapsed
// are those of the pipeline's run (each resume starts a new one), run counts the runs seen.
const samples = new Map();
const replayed = new Set();  // ended jobs whose events were all read (their chart is whole)
const deleted = new Set();   // jobs deleted (here or elsewhere): late answers are dropped
let selected = null;
let detailTimer = null;
let chartFrame = null;

class AuthError extends Error {}
class GoneError extends Error {}  // the job no longer exists: nothing to tell the user

// -- the API ------------------------------------------------------------------------

function token() { return sessionStorage.getItem("conveyor-token") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function request(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers() }));
  if (response.status === 401) {
    askToken(token() ? "The token was refused." : "Enter the service's token.");
    throw new AuthError("401");
  }
  const job = response.status === 404 ? goneJob(path) : null;
  if (job !== null) {
    // Deleted (by this page, while this request was on its way, or elsewhere): the job
    // leaves the page quietly, as the next listing would drop it.
    deleted.add(job);
    if (jobs.has(job)) { forget(job); renderJobs(); }
    throw new GoneError(path);
  }
  if (!response.ok) {
    let detail = path;
    try { detail = (await response.json()).detail || path; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : path}`);
  }
  return response;
}

function goneJob(path) {
  // The job a 404 says is gone: any of its paths but a file's (a file can be missing
  // from a job that exists).
  const match = /^\/v1\/jobs\/([^/?#]+)(\/[^?#]*)?/.exec(path);
  if (!match || (match[2] || "").startsWith("/files/")) return null;
  return decodeURIComponent(match[1]);
}

async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

async function download(path, filename) {
  // A plain link would not send the bearer header: fetch with it and save the blob.
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = el("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  notice(`Downloaded ${filename} (${bytes(blob.size)}).`);
}

function askToken(why) {
  const form = document.getElementById("token-form");
  const opening = form.hidden;
  form.hidden = false;
  setText(document.getElementById("message"), why);
  if (opening) document.getElementById("token").focus();
}

function showError(e) {
  if (e instanceof AuthError || e instanceof GoneError || e.name === "AbortError") return;
  const message = document.getElementById("message");
  const text = String(e.message || e);
  setText(message, text);
  setTimeout(() => { if (message.textContent === text) setText(message, ""); }, 15000);
}

function notice(text) { setText(document.getElementById("notice"), text); }

// -- formatting and the DOM -----------------------------------------------------------

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : String(Math.round(n))) + " " + units[i];
}

function rate(n) { return bytes(n) + "/s"; }

function number(n) { return n >= 10 ? String(Math.round(n)) : String(+n.toFixed(1)); }

function duration(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function clock(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }

function done(p) { return p.completed + p.failed + p.skipped; }

function outcome(job) {
  // [text, class]: a job that completed with failures does not look like a clean one.
  const p = job.progress;
  if (job.status !== "completed" || !p.failed) return [job.status, job.status];
  if (!p.completed && !p.skipped) return ["completed, all failed", "failed"];
  return [`completed, ${p.failed} failed`, "partial"];
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

function cells(row, n) {
  while (row.cells.length < n) row.append(el("td"));
  return row.cells;
}

function syncRows(tbody, list, key, fill) {
  // Make tbody's rows match list, in order: a row per key, reused and updated in place.
  const old = new Map([...tbody.rows].map((r) => [r.dataset.key, r]));
  let at = tbody.firstElementChild;
  for (const item of list) {
    const k = key(item);
    let row = old.get(k);
    if (row) old.delete(k); else { row = el("tr"); row.dataset.key = k; }
    fill(row, item);
    if (row === at) at = at.nextElementSibling; else tbody.insertBefore(row, at);
  }
  for (const row of old.values()) row.remove();
}

// -- the jobs table ---------------------------------------------------------------------

function newestFirst() { return [...jobs.values()].reverse(); }

function renderJobs() {
  syncRows(document.querySelector("#jobs tbody"), newestFirst(), (j) => j.job_id, fillJob);
  document.getElementById("empty").hidden = jobs.size > 0;
}

function buildJob(row, id) {
  row.dataset.job = id;
  row.className = "job";
  const [name, , progress, , , , , actions] = cells(row, 8);
  const show = el("button", id, "link");
  show.type = "button";
  show.setAttribute("aria-controls", "detail");
  show.addEventListener("click", () => select(id));
  name.append(show);
  const bar = el("div", undefined, "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-label", `job ${id}`);
  bar.append(el("div", undefined, "ok"), el("div", undefined, "bad"));
  progress.append(bar, el("span", undefined, "percent"));
  for (const verb of ["pause", "resume", "cancel", "delete"]) {
    const button = el("button", verb);
    button.type = "button";
    button.dataset.verb = verb;
    button.setAttribute("aria-label", `${verb} job ${id}`);
    button.addEventListener("click", (e) => {
      e.stopPropagation();
      (verb === "delete" ? remove(id) : control(id, verb)).catch(showError);
    });
    actions.append(button);
  }
  row.addEventListener("click", (e) => { if (e.target === row || e.target.tagName === "TD") select(id); });
}

function fillJob(row, job) {
  if (!row.cells.length) buildJob(row, job.job_id);
  const [, statusCell, progress, items, moved, speed, eta, actions] = row.cells;
  const p = job.progress;
  const [text, cls] = outcome(job);
  let status = statusCell.firstElementChild;
  if (!status) statusCell.append(status = el("span"));
  setText(status, text);
  status.className = "status status-" + cls;
  status.dataset.status = job.status;
  const bar = progress.firstElementChild;
  const share = (n) => (p.total ? Math.min(100, (100 * n) / p.total) : 0) + "%";
  bar.firstElementChild.style.width = share(p.completed + p.skipped);
  bar.lastElementChild.style.width = share(p.failed);
  bar.setAttribute("aria-valuenow", String(p.percent));
  bar.setAttribute("aria-valuetext", `${p.percent.toFixed(1)}%, ${p.failed} failed`);
  setText(progress.lastElementChild, " " + p.percent.toFixed(1) + "%");
  const skipped = p.skipped ? `, ${p.skipped} skipped` : "";
  setText(items, `${p.completed} done, ${p.failed} failed${skipped} of ${p.total}`);
  setText(moved, bytes(p.bytes));
  setText(speed, job.status === "queued" ? "—" : rate(p.bytes_per_s));
  const running = job.status === "running" && p.eta_s !== null;
  setText(eta, running ? duration(p.eta_s) : TERMINAL.has(job.status) ? "" : "—");
  for (const button of actions.children) {
    const verb = button.dataset.verb;
    button.hidden = !(verb === "resume" ? job.status === "paused"
      : verb === "pause" ? ["queued", "running"].includes(job.status)
      : verb === "cancel" ? !TERMINAL.has(job.status)
      : TERMINAL.has(job.status));
  }
  row.classList.toggle("selected", job.job_id === selected);
  const show = row.cells[0].firstElementChild;
  if (job.job_id === selected) show.setAttribute("aria-current", "true");
  else show.removeAttribute("aria-current");
}

function remember(doc) {
  // Keep the furthest progress: a replayed event or an older answer never moves it back.
  if (deleted.has(doc.job_id)) return;  // an answer sent before the job was deleted
  const known = jobs.get(doc.job_id);
  if (known && done(known.progress) > done(doc.progress)) doc.progress = known.progress;
  jobs.set(doc.job_id, Object.assign(known || {}, doc));
}

function forget(id) {
  jobs.delete(id);
  samples.delete(id);
  replayed.delete(id);
  if (streams.has(id)) streams.get(id).abort();
  if (selected === id) {
    selected = null;
    document.getElementById("detail").hidden = true;
    history.replaceState(null, "", location.pathname);
  }
}

async function control(id, verb) {
  remember(await api(`/v1/jobs/${id}/${verb}`, { method: "POST" }));
  renderJobs();
  manageStreams();
}

async function remove(id) {
  if (!confirm(`Delete job ${id} and its files?`)) return;
  deleted.add(id);
  try {
    await api(`/v1/jobs/${id}`, { method: "DELETE" });
  } catch (e) {
    if (!(e instanceof GoneError)) { deleted.delete(id); throw e; }  // not deleted after all
  }
  forget(id);
  renderJobs();
  notice(`Deleted job ${id}.`);
}

// -- the job shown ---------------------------------------------------------------------

class Pager {
  // A job's items of one status, PAGE_SIZE at a time, with the API's cursors.
  constructor(root, status, fill) {
    this.root = root;
    this.status = status;
    this.fill = fill;
    this.job = null;
    root.querySelector(".prev").addEventListener("click", () => this.go(-1));
    root.querySelector(".next").addEventListener("click", () => this.go(1));
  }

  open(job) {
    this.job = job;
    this.cursors = [0];
    this.index = 0;
    this.root.querySelector("tbody").replaceChildren();
    return this.load();
  }

  go(step) {
    this.index += step;
    this.load().catch(showError);
  }

  async load() {
    const [job, index] = [this.job, this.index];
    // One item more than shown says whether there is a next page.
    const query = `status=${this.status}&cursor=${this.cursors[index]}&limit=${PAGE_SIZE + 1}`;
    const page = await api(`/v1/jobs/${job}/items?${query}`);
    if (job !== this.job || index !== this.index) return;  // another page was asked since
    const items = page.items.slice(0, PAGE_SIZE);
    const more = page.items.length > PAGE_SIZE;
    this.cursors.length = index + 1;
    if (more) this.cursors.push(items[items.length - 1].seq);
    syncRows(this.root.querySelector("tbody"), items, (i) => String(i.seq), this.fill);
    this.root.querySelector(".prev").disabled = index === 0;
    this.root.querySelector(".next").disabled = !more;
    const first = index * PAGE_SIZE;
    const of = (jobs.get(job) || { progress: {} }).progress[this.status];
    setText(this.root.querySelector(".range"), items.length
      ? `${first + 1}–${first + items.length}` + (of === undefined ? "" : ` of ${of}`)
      : "none");
  }
}

function fillFailed(row, item) {
  const [index, url, kind, message, attempts] = cells(row, 5);
  setText(index, item.index === null || item.index === undefined ? "" : String(item.index));
  index.title = `id ${item.id}`;
  if (!url.firstChild) {
    const safe = /^https?:/i.test(item.url);
    const link = el(safe ? "a" : "span", item.url);
    if (safe) { link.href = item.url; link.rel = "noreferrer noopener"; link.target = "_blank"; }
    url.append(link);
    url.className = "url";
  }
  setText(kind, item.error_kind || "");
  setText(message, item.error || "");
  setText(attempts, String(item.attempts));
}

function fileLink(href, filename, text) {
  const a = el("a", text);
  a.href = href;
  a.download = filename;
  a.addEventListener("click", (e) => { e.preventDefault(); download(href, filename).catch(showError); });
  return a;
}

function fillFile(row, item) {
  const [name, size, sha] = cells(row, 3);
  if (!name.firstChild) {
    const path = item.name.split("/").map(encodeURIComponent).join("/");
    const base = item.name.split("/").pop();
    name.append(fileLink(`/v1/jobs/${selected}/files/${path}`, base, item.name));
    name.className = "url";
  }
  setText(size, item.size === null ? "" : bytes(item.size));
  setText(sha, item.sha256 ? item.sha256.slice(0, 12) + "…" : "");
  sha.title = item.sha256 || "";
}

const failedPager = new Pager(document.getElementById("failed"), "failed", fillFailed);
const filesPager = new Pager(document.getElementById("files"), "completed", fillFile);

function select(id) {
  selected = id;
  history.replaceState(null, "", "#" + encodeURIComponent(id));  // a reload shows it again
  document.getElementById("detail").hidden = false;
  setText(document.getElementById("detail-id"), id);
  const result = document.getElementById("result-link");
  result.href = `/v1/jobs/${id}/result`;
  result.download = `${id}-result.json`;
  for (const tbody of document.querySelectorAll("#errors tbody, #hosts tbody")) tbody.replaceChildren();
  renderJobs();
  drawCharts();
  manageStreams();
  Promise.all([failedPager.open(id), filesPager.open(id), loadDetail()]).catch(showError);
}

function scheduleDetail() {
  if (detailTimer === null) detailTimer = setTimeout(() => loadDetail().catch(showError), 2000);
}

async function loadDetail() {
  clearTimeout(detailTimer);
  detailTimer = null;
  const id = selected;
  if (!id) return;
  const job = await api(`/v1/jobs/${id}`);
  if (id !== selected) return;
  remember(job);
  renderJobs();
  const p = job.progress;
  const times = [`submitted ${clock(job.created_at)}`];
  if (job.started_at) times.push(`started ${clock(job.started_at)}`);
  if (job.finished_at) times.push(`ended ${clock(job.finished_at)}`);
  setText(document.getElementById("detail-summary"),
    `${outcome(job)[0]}: ${p.completed} completed, ${p.failed} failed, ${p.skipped} skipped ` +
    `of ${p.total}; ${bytes(p.bytes)}; ${times.join(", ")}` + (job.error ? `. ${job.error}` : ""));
  syncRows(document.querySelector("#errors tbody"), Object.entries(job.errors), ([k]) => k,
    (row, [kind, n]) => { const c = cells(row, 2); setText(c[0], kind); setText(c[1], String(n)); });
  syncRows(document.querySelector("#hosts tbody"), Object.entries(job.hosts), ([h]) => h,
    (row, [host, st]) => {
      const c = cells(row, 5);
      setText(c[0], host);
      setText(c[1], String(st.attempts ?? ""));
      setText(c[2], String(st.successes ?? ""));
      setText(c[3], failures(st.failures));
      setText(c[4], String(st.breaker ?? ""));
    });
  await Promise.all([failedPager.load(), filesPager.load()]);
}

function failures(byKind) {
  // A host's failed attempts, by error kind: "3 (timeout 2, http_5xx 1)".
  if (typeof byKind === "number") return String(byKind);
  const kinds = Object.entries(byKind || {});
  const total = kinds.reduce((n, [, k]) => n + k, 0);
  return kinds.length ? `${total} (${kinds.map(([k, n]) => k + " " + n).join(", ")})` : "0";
}

// -- the throughput chart ---------------------------------------------------------------

function addSample(id, event) {
  let list = samples.get(id);
  if (!list) samples.set(id, (list = []));
  const last = list[list.length - 1];
  if (last && event.ts <= last.ts) return;  // replayed again
  // The rate is drawn from the bytes the run downloaded (event.bytes counts completed
  // files once committed, so it lags behind, across runs). A run's count starts again at
  // 0 when the job resumes: a count or clock that goes back begins a new run.
  const moved = event.run || { bytes: last ? last.bytes : 0, elapsed: last ? last.elapsed : 0 };
  const restarted = last && (moved.bytes < last.bytes || moved.elapsed < last.elapsed);
  const run = last ? last.run + (restarted ? 1 : 0) : 0;
  list.push({ ts: event.ts, done: done(event), bytes: moved.bytes, elapsed: moved.elapsed, run });
  let old = 0;
  while (list[old].ts < event.ts - WINDOW_S - SMOOTH_S) old++;
  if (old) list.splice(0, old);
  if (id === selected && chartFrame === null) chartFrame = requestAnimationFrame(drawCharts);
}

function series(list, key) {
  // The rate of list[key] at each sample, over the SMOOTH_S before it (at least since the
  // sample before) within the same run; null after a gap or at a new run's first sample,
  // where the line breaks.
  const out = [];
  let j = 0;
  for (let i = 1; i < list.length; i++) {
    while (j < i - 1 && (list[i].ts - list[j].ts > SMOOTH_S || list[j].run !== list[i].run)) j++;
    const dt = list[i].ts - list[j].ts;
    const v = Math.max(0, (list[i][key] - list[j][key]) / dt);
    out.push(dt > GAP_S || list[j].run !== list[i].run ? null : { ts: list[i].ts, v });
  }
  return out;
}

function niceCeil(v) {
  const e = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].find((m) => v <= m * e) * e;
}

function drawCharts() {
  chartFrame = null;
  if (!selected) return;
  const list = samples.get(selected) || [];
  const end = list.length ? list[list.length - 1].ts : 0;
  // A young job's chart spans its life so far; an older one's, the last WINDOW_S.
  const span = list.length ? Math.min(WINDOW_S, Math.max(10, end - list[0].ts)) : WINDOW_S;
  const axis = { end, span, live: !TERMINAL.has((jobs.get(selected) || {}).status) };
  drawChart(document.getElementById("chart-files"), "Files per second", series(list, "done"),
    axis, (v) => number(v) + "/s", 1);
  drawChart(document.getElementById("chart-bytes"), "Download rate", series(list, "bytes"),
    axis, rate, 1000);
}

function drawChart(figure, title, points, { end, span, live }, format, floor) {
  if (!figure.querySelector("svg")) {
    const svg = document.getElementById("chart-template").content.firstElementChild.cloneNode(true);
    figure.firstElementChild.id = figure.id + "-caption";
    svg.setAttribute("aria-labelledby", figure.id + "-caption");
    figure.append(svg);
  }
  const svg = figure.querySelector("svg");
  const start = end - span;
  const shown = points.filter((p) => p === null || p.ts >= start);
  const values = shown.filter((p) => p !== null).map((p) => p.v);
  const peak = Math.max(0, ...values);
  const top = niceCeil(Math.max(peak, floor));
  let line = "";
  let area = "";
  let run = [];
  const flush = () => {
    if (run.length > 1) {
      line += "M" + run.join("L");
      area += `M${run[0][0]},110L${run.join("L")}L${run[run.length - 1][0]},110Z`;
    }
    run = [];
  };
  for (const p of shown) {
    if (p === null) { flush(); continue; }
    const x = 44 + ((p.ts - start) / span) * 348;
    run.push([x.toFixed(1), (110 - (p.v / top) * 100).toFixed(1)]);
  }
  flush();
  svg.querySelector(".line").setAttribute("d", line);
  svg.querySelector(".area").setAttribute("d", area);
  svg.dataset.points = String(values.length);
  svg.dataset.peak = String(peak);
  setText(svg.querySelector(".ymax"), format(top));
  setText(svg.querySelector(".xstart"),
    span < 60 ? `−${Math.round(span)} s` : `−${+(span / 60).toFixed(1)} min`);
  setText(svg.querySelector(".xend"), live ? "now" : "end");
  const latest = values.length ? values[values.length - 1] : 0;
  const text = values.length
    ? `${title}: ${format(latest)} ${live ? "now" : "at the end"}, peak ${format(peak)}`
    : `${title}: no progress reported yet`;
  setText(figure.firstElementChild, text);
}

// -- events -------------------------------------------------------------------------------

function apply(id, event) {
  const job = jobs.get(id);
  if (!job) return;
  if (event.type === "progress") {
    addSample(id, event);
    if (done(event) >= done(job.progress)) {
      for (const key of Object.keys(job.progress)) if (key in event) job.progress[key] = event[key];
    }
    if (id === selected && event.hosts && event.hosts.length) scheduleDetail();
  } else if (event.type === "status") {
    if (!TERMINAL.has(job.status)) job.status = event.status;  // not an ended job's replay
  } else {
    if (event.type === "item" && id === selected) scheduleDetail();
    return;
  }
  const row = document.querySelector(`#jobs tr[data-job="${CSS.escape(id)}"]`);
  if (row) fillJob(row, job);
}

async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function follow(id) {
  // Read the job's events from the first one kept (which fills its chart) until it ends.
  if (streams.has(id)) return;
  const controller = new AbortController();
  streams.set(id, controller);
  const live = !TERMINAL.has((jobs.get(id) || {}).status);
  let last = 0;
  try {
    for (;;) {
      const response = await fetch(`/v1/jobs/${id}/events`, {
        headers: headers({ "Last-Event-ID": String(last) }), signal: controller.signal });
      if (response.status === 401) { askToken("The token was refused."); return; }
      if (!response.ok) return;
      const before = last;
      await readEvents(response, (event) => { if (event.seq) last = event.seq; apply(id, event); });
      const job = await api(`/v1/jobs/${id}`);
      remember(job);
      renderJobs();
      if (TERMINAL.has(job.status)) {
        replayed.add(id);
        if (live) notice(`Job ${id} ${outcome(job)[0]}.`);
        return;
      }
      if (last === before) return;  // the service is stopping: polling starts it again
    }
  } catch (e) {
    showError(e);
  } finally {
    if (streams.get(id) === controller) streams.delete(id);
    if (id === selected) { scheduleDetail(); drawCharts(); }
  }
}

function manageStreams() {
  // Follow the job shown (until its chart is whole) and the newest running jobs.
  const wanted = new Set();
  if (selected && !replayed.has(selected)) wanted.add(selected);
  for (const job of newestFirst()) {
    if (wanted.size >= MAX_STREAMS) break;
    if (job.status === "running") wanted.add(job.job_id);
  }
  for (const [id, controller] of streams) if (!wanted.has(id)) controller.abort();
  for (const id of wanted) follow(id);
}

async function refresh() {
  if (!document.getElementById("token-form").hidden) return;  // waiting for a token
  const connection = document.getElementById("connection");
  try {
    // Every page (jobs come oldest first, so the newest are on the last one), up to a cap.
    const listed = [];
    let cursor = 0;
    let complete = false;
    for (let pages = 0; pages < MAX_JOB_PAGES; pages++) {
      const page = await api(`/v1/jobs?limit=1000&cursor=${cursor}`);
      listed.push(...page.jobs);
      if (page.next_cursor === null) { complete = true; break; }
      cursor = page.next_cursor;
    }
    setText(connection, "connected");
    const seen = new Set(listed.map((j) => j.job_id));
    if (complete) for (const id of [...jobs.keys()]) if (!seen.has(id)) forget(id);
    for (const job of listed) remember(job);
    renderJobs();
    const shown = decodeURIComponent(location.hash.slice(1));
    if (!selected && jobs.has(shown)) select(shown);
    manageStreams();
  } catch (e) {
    if (!(e instanceof AuthError)) setText(connection, "not connected");
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("conveyor-token", document.getElementById("token").value);
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
  setText(document.getElementById("message"), "");
  refresh();
});

document.getElementById("result-link").addEventListener("click", (e) => {
  e.preventDefault();
  const a = e.currentTarget;
  download(a.getAttribute("href"), a.download).catch(showError);
});

refresh();
setInterval(refresh, 3000);
