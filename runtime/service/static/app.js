// The conveyor dashboard: jobs with live progress (Server-Sent Events read through
// fetch, so the token travels in a header, never in a url), a job's hosts and failures,
// and cancel / pause / resume. The token is kept in this tab's sessionStorage only.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const jobs = new Map();      // job id -> last known job document
const streams = new Map();   // job id -> AbortController of its event stream
let selected = null;

function token() { return sessionStorage.getItem("conveyor-token") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers() }));
  if (response.status === 401) { askToken("The token was refused."); throw new Error("401"); }
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.status === 204 ? null : response.json();
}

function askToken(why) {
  document.getElementById("token-form").hidden = false;
  document.getElementById("message").textContent = why || "Enter the service's token.";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function render() {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of [...jobs.values()].reverse()) {
    const p = job.progress;
    const row = el("tr", undefined, "job");
    row.dataset.job = job.job_id;
    row.append(el("td", job.job_id));
    row.append(el("td", job.status, "status status-" + job.status));
    const cell = el("td");
    const bar = el("div", undefined, "bar");
    const fill = el("div");
    fill.style.width = Math.min(100, p.percent) + "%";
    bar.append(fill);
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuenow", String(p.percent));
    cell.append(bar, el("span", " " + p.percent.toFixed(1) + "%", "percent"));
    row.append(cell);
    row.append(el("td", `${p.completed} done, ${p.failed} failed of ${p.total}`, "counts"));
    const actions = el("td");
    for (const verb of ["pause", "resume", "cancel"]) {
      const allowed = verb === "resume" ? job.status === "paused"
        : verb === "pause" ? ["queued", "running"].includes(job.status)
        : !TERMINAL.has(job.status);
      if (!allowed) continue;
      const button = el("button", verb);
      button.dataset.verb = verb;
      button.addEventListener("click", (e) => { e.stopPropagation(); control(job.job_id, verb); });
      actions.append(button);
    }
    row.append(actions);
    row.addEventListener("click", () => { selected = job.job_id; showDetail(); });
    body.append(row);
  }
}

async function control(id, verb) {
  try {
    jobs.set(id, await api(`/v1/jobs/${id}/${verb}`, { method: "POST" }));
    render();
    follow(id);
  } catch (e) { document.getElementById("message").textContent = String(e); }
}

async function showDetail() {
  if (!selected) return;
  const job = await api(`/v1/jobs/${selected}`);
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = job.job_id;
  const errors = document.querySelector("#errors tbody");
  errors.replaceChildren();
  for (const [kind, n] of Object.entries(job.errors)) {
    const row = el("tr"); row.append(el("td", kind), el("td", String(n))); errors.append(row);
  }
  const hosts = document.querySelector("#hosts tbody");
  hosts.replaceChildren();
  for (const [host, st] of Object.entries(job.hosts)) {
    const row = el("tr");
    row.append(el("td", host), el("td", String(st.attempts ?? "")),
      el("td", String(st.successes ?? "")), el("td", failures(st.failures)),
      el("td", String(st.breaker ?? "")));
    hosts.append(row);
  }
}

function failures(byKind) {
  // A host's failed attempts, by error kind: "3 (timeout 2, http_5xx 1)".
  if (typeof byKind === "number") return String(byKind);
  const kinds = Object.entries(byKind || {});
  const total = kinds.reduce((n, [, k]) => n + k, 0);
  return kinds.length ? `${total} (${kinds.map(([k, n]) => k + " " + n).join(", ")})` : "0";
}

function apply(id, event) {
  const job = jobs.get(id);
  if (!job) return;
  if (event.type === "progress") {
    for (const key of Object.keys(job.progress)) if (key in event) job.progress[key] = event[key];
  } else if (event.type === "status") {
    job.status = event.status;
  }
  render();
}

async function follow(id) {
  if (streams.has(id)) return;
  const controller = new AbortController();
  streams.set(id, controller);
  let last = 0;
  try {
    while (!TERMINAL.has((jobs.get(id) || {}).status)) {
      const response = await fetch(`/v1/jobs/${id}/events`, {
        headers: headers({ "Last-Event-ID": String(last) }), signal: controller.signal });
      if (!response.ok) break;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          if (event.seq) last = event.seq;
          apply(id, event);
        }
      }
      jobs.set(id, await api(`/v1/jobs/${id}`));
      render();
    }
  } catch (e) {
    if (e.name !== "AbortError") document.getElementById("message").textContent = String(e);
  } finally {
    streams.delete(id);
    if (selected === id) showDetail();
  }
}

async function refresh() {
  try {
    const page = await api("/v1/jobs?limit=200");
    document.getElementById("message").textContent = page.jobs.length ? "" : "No jobs yet.";
    document.getElementById("connection").textContent = "connected";
    for (const job of page.jobs) {
      const known = jobs.get(job.job_id);
      if (!known || !streams.has(job.job_id)) jobs.set(job.job_id, job);
      if (!TERMINAL.has(job.status)) follow(job.job_id);
    }
    render();
  } catch (e) {
    document.getElementById("connection").textContent = "not connected";
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("conveyor-token", document.getElementById("token").value);
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
  refresh();
});

refresh();
setInterval(refresh, 3000);
