// actionq dashboard: the few things htmx does not do for us.
//
// 1. The job page follows the API's own SSE streams (/v1/jobs/{id}/events and /stream) with
//    EventSource. Their data is JSON, not HTML, so the htmx SSE extension (which swaps HTML) would
//    need a second, HTML-rendering copy of each stream on the server, with its own resumption;
//    reading the API's streams directly keeps one implementation, and EventSource resends
//    Last-Event-ID by itself when it reconnects. The page was rendered from the stored state, so
//    events at or before the rendered seq, and items before the rendered count, are dropped.
// 2. Buttons with data-api call the /v1 API (JSON bodies; the login cookie authenticates them)
//    and show the acknowledgement in the element named by data-ack.
// 4. The jobs list follows /v1/events (the job kinds) and, for each event, fetches that job's row
//    as the server renders it now, with the list's filters (/ui/jobs/{id}/row): it replaces the
//    row, or is put on top as a new one; a 204 (no longer passes the filters) removes the row.
//    Rendering on the server keeps one copy of the row and of the filters.
// 3. Run forms turn their fields into JSON params, POST /v1/jobs, and put the 422's field
//    messages next to their fields; on success they go to the job's page.
"use strict";

(function () {
  const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled"]);
  const TIMELINE_MAX = 500; // progress entries kept on the page (the bar always shows the latest)

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pct(value) {
    return value === null || value === undefined ? "" : Math.round(value) + " %";
  }

  function tree(subTasks) {
    if (!subTasks || !subTasks.length) return null;
    const list = el("ul", { class: "subtasks" });
    for (const sub of subTasks) {
      const item = el("li");
      item.append(el("span", { class: "sub-name" }, sub.name), " ", el("span", { class: "muted" }, "(weight " + sub.weight + ")"));
      const bar = el("progress", { max: "100", "aria-label": sub.name });
      if (sub.progress.percentage !== null && sub.progress.percentage !== undefined) bar.value = sub.progress.percentage;
      item.append(" ", bar, " ", el("span", { class: "pct" }, pct(sub.progress.percentage)));
      if (sub.progress.message) item.append(" ", el("span", { class: "muted" }, sub.progress.message));
      const inner = tree(sub.progress.sub_tasks);
      if (inner) item.append(inner);
      list.append(item);
    }
    return list;
  }

  function showSnapshot(snap) {
    const state = document.getElementById("job-state");
    state.textContent = snap.state;
    state.className = "state state-" + snap.state;
    const bar = document.getElementById("job-progress");
    const label = document.getElementById("job-pct");
    const p = snap.progress;
    let value = p && p.percentage !== null && p.percentage !== undefined ? p.percentage : null;
    if (value === null && snap.state === "succeeded") value = 100;
    if (value === null) bar.removeAttribute("value");
    else bar.value = value;
    label.textContent = pct(value);
    let message = p && p.message ? p.message : "";
    if (!message && p && p.current_step !== null && p.current_step !== undefined) {
      message = "(step " + p.current_step + (p.total_steps ? " of " + p.total_steps : "") + ")";
    }
    document.getElementById("job-message").textContent = message;
    const holder = document.getElementById("job-tree");
    holder.replaceChildren();
    const sub = tree(p ? p.sub_tasks : null);
    if (sub) holder.append(sub);
  }

  function followEvents(live) {
    let seen = Number(live.dataset.seq);
    const status = document.getElementById("live-status");
    const timeline = document.getElementById("timeline");
    const source = new EventSource(live.dataset.events);
    const onEvent = (event) => {
      const snap = JSON.parse(event.data);
      if (snap.seq <= seen) return; // already on the page (rendered, or before a reconnect)
      seen = snap.seq;
      live.dataset.seq = String(seen);
      showSnapshot(snap);
      const when = new Date().toISOString().replace("T", " ").slice(0, 19) + "Z";
      const p = snap.progress;
      const text = when + " · seq " + snap.seq + " · " + event.type + " · " + snap.state +
        (p && p.percentage !== null && p.percentage !== undefined ? " · " + pct(p.percentage) : "") +
        (p && p.message ? " · " + p.message : "");
      timeline.append(el("li", { "data-seq": String(snap.seq) }, text));
      const entries = timeline.querySelectorAll("li[data-seq]");
      if (entries.length > TIMELINE_MAX) entries[0].remove(); // a tight loop must not grow the page forever
      if (TERMINAL.has(snap.state)) {
        source.close();
        status.textContent = "ended";
        live.dataset.terminal = "true";
        const cancel = document.getElementById("cancel-job");
        if (cancel) cancel.disabled = true;
        if (window.htmx) htmx.ajax("GET", live.dataset.outcome, { target: "#outcome", swap: "innerHTML" });
      }
    };
    source.addEventListener("state", onEvent);
    source.addEventListener("progress", onEvent);
    source.addEventListener("open", () => { status.textContent = "live"; });
    source.addEventListener("error", (event) => {
      if (event.data) { // the API's own error event: the stream ended with it
        source.close();
        status.textContent = "stopped: " + JSON.parse(event.data).error.message;
      } else if (live.dataset.terminal !== "true") {
        status.textContent = "reconnecting…"; // EventSource retries by itself, with Last-Event-ID
      }
    });
  }

  function followStream(live) {
    let next = Number(live.dataset.items); // items 0..next-1 are on the page
    const section = document.getElementById("output-section");
    const output = document.getElementById("output");
    const source = new EventSource(live.dataset.stream);
    source.addEventListener("item", (event) => {
      const index = Number(event.lastEventId.split("-")[1]) - 1;
      if (index < next) return;
      next = index + 1;
      section.hidden = false;
      const item = el("li", { "data-index": String(index) });
      item.append(el("code", {}, event.data));
      output.append(item);
    });
    source.addEventListener("end", (event) => {
      source.close();
      const end = JSON.parse(event.data);
      document.getElementById("output-end").textContent =
        "end: " + end.state + ", " + end.count + " items" + (end.error ? " — " + end.error.type + ": " + end.error.message : "");
    });
    source.addEventListener("error", (event) => {
      if (!event.data) return; // a dropped connection: EventSource reconnects with Last-Event-ID
      source.close();
      const problem = JSON.parse(event.data).error;
      if (problem.type === "StreamUnavailableError" && next === 0) section.hidden = true; // not a generator
      else document.getElementById("output-end").textContent = problem.type + ": " + problem.message;
    });
  }

  function followJobs(table) {
    const body = table.tBodies[0];
    const status = document.getElementById("jobs-live");
    const max = Number(table.dataset.maxRows);
    const query = table.dataset.rowQuery;
    const source = new EventSource(table.dataset.events);
    const pending = new Map(); // job id -> a fetch in flight: a burst of events of one job asks once more at most
    async function refresh(jobId) {
      const reply = await fetch("/ui/jobs/" + encodeURIComponent(jobId) + "/row" + (query ? "?" + query : ""),
        { credentials: "same-origin", headers: { Accept: "text/html" } });
      const old = body.querySelector('tr[data-job="' + CSS.escape(jobId) + '"]');
      if (reply.status === 204) {
        if (old) old.remove();
      } else if (reply.ok) {
        const holder = document.createElement("tbody");
        holder.innerHTML = (await reply.text()).trim();
        const row = holder.querySelector("tr[data-job]"); // none: e.g. the login form, the token expired
        if (row && old) old.replaceWith(row);
        else if (row) body.prepend(row);
        while (body.rows.length > max) body.rows[body.rows.length - 1].remove();
      }
      document.getElementById("no-jobs").hidden = body.rows.length > 0;
    }
    function onEvent(event) {
      const jobId = JSON.parse(event.data).job_id;
      if (typeof jobId !== "string") return;
      if (pending.has(jobId)) { pending.set(jobId, true); return; }
      pending.set(jobId, false);
      const run = () => refresh(jobId).catch(() => {}).finally(() => {
        if (pending.get(jobId)) { pending.set(jobId, false); run(); } else pending.delete(jobId);
      });
      run();
    }
    for (const kind of new URL(table.dataset.events, location.href).searchParams.getAll("kind")) {
      source.addEventListener(kind, onEvent);
    }
    source.addEventListener("open", () => { status.textContent = "live"; });
    source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  }

  function describe(reply) {
    if (reply.error) return reply.error.type + ": " + reply.error.message;
    if (reply.answers) {
      return reply.command + ": " + reply.answers.map((a) => a.worker_id + " " + a.answer + (a.error ? " (" + a.error + ")" : "")).join("; ");
    }
    if (reply.outcome) return "cancel: " + reply.outcome;
    if (reply.results) {
      return reply.results.map((r) => r.replayed + ": " + (r.error ? r.error.type : "replayed as " + r.job_id)).join("; ");
    }
    if (reply.purged !== undefined) return "purged " + reply.purged;
    if (reply.replayed) return "replayed " + reply.replayed + " as " + reply.job_id;
    if (reply.job_id) return "submitted " + reply.job_id;
    return "done";
  }

  function uiLocation(location) {
    return location.startsWith("/v1/jobs/") ? "/ui/jobs/" + location.slice("/v1/jobs/".length) : location;
  }

  async function callApi(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const ack = document.querySelector(button.dataset.ack);
    let body = button.dataset.body ? JSON.parse(button.dataset.body) : null;
    if (button.dataset.selection) {
      const ids = [...document.querySelectorAll('input[name="' + button.dataset.selection + '"]:checked')].map((i) => i.value);
      if (!ids.length) { ack.textContent = "select at least one"; return; }
      body = Object.assign(body || {}, { ids: ids });
    }
    button.disabled = true; // until the reply; it stays disabled once acted (the page moves on or is refreshed)
    ack.textContent = button.textContent.trim() + "…";
    let acted = false;
    try {
      const init = { method: button.dataset.api, credentials: "same-origin", headers: {} };
      if (body !== null) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
      const response = await fetch(button.dataset.url, init);
      const reply = response.status === 204 ? {} : await response.json();
      ack.textContent = (response.ok ? "" : response.status + " ") + describe(reply);
      ack.dataset.ok = String(response.ok);
      if (!response.ok) return;
      acted = true;
      document.body.dispatchEvent(new CustomEvent("actionq:done", { bubbles: true }));
      if (button.dataset.go === "location" && reply.location) window.location.assign(uiLocation(reply.location));
      else if (button.dataset.go && button.dataset.go !== "location") window.location.assign(button.dataset.go);
    } catch (problem) {
      ack.textContent = "failed: " + problem;
    } finally {
      if (!acted) button.disabled = false;
    }
  }

  function paramValue(field) {
    const text = field.value;
    if (text.trim() === "") return undefined; // left empty: the argument's default
    const kind = field.dataset.kind;
    if (kind === "string") return text;
    try {
      const value = JSON.parse(text);
      if ((kind === "integer" || kind === "number") && typeof value !== "number") return text;
      return value;
    } catch (_) {
      return text; // sent as typed: the gateway's validation names the field
    }
  }

  function clearErrors(form) {
    for (const p of form.querySelectorAll(".field-error, .form-error")) p.textContent = "";
    for (const f of form.querySelectorAll("[aria-invalid]")) f.removeAttribute("aria-invalid");
  }

  function showErrors(form, problem) {
    const rest = [];
    for (const f of problem.fields || []) {
      const name = String(f.field).split(".").pop();
      const slot = form.querySelector('[data-error-for="' + CSS.escape(name) + '"]');
      if (slot) {
        slot.textContent = f.message;
        const input = form.querySelector('[name="' + CSS.escape(name) + '"]');
        if (input) input.setAttribute("aria-invalid", "true");
      } else {
        rest.push(f.field + ": " + f.message);
      }
    }
    if (!(problem.fields || []).length || rest.length) {
      form.querySelector(".form-error").textContent = problem.type + ": " + (rest.length ? rest.join("; ") : problem.message);
    }
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }

  async function submitRun(form) {
    clearErrors(form);
    const params = {};
    for (const field of form.querySelectorAll("[data-kind]")) {
      const value = paramValue(field);
      if (value !== undefined) params[field.name] = value;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const response = await fetch("/v1/jobs", {
        method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ plugin: form.dataset.plugin, action: form.dataset.action, params: params }),
      });
      const reply = await response.json();
      if (response.ok) window.location.assign("/ui/jobs/" + encodeURIComponent(reply.job_id));
      else showErrors(form, reply.error);
    } catch (problem) {
      form.querySelector(".form-error").textContent = "failed: " + problem;
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-api]");
    if (button) { event.preventDefault(); callApi(button); }
  });
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form.run-form");
    if (form) { event.preventDefault(); submitRun(form); }
  });
  document.addEventListener("DOMContentLoaded", () => {
    const jobs = document.getElementById("jobs");
    if (jobs && jobs.dataset.events) followJobs(jobs);
    const live = document.getElementById("live");
    if (!live) return;
    if (live.dataset.terminal === "true") { // an ended job's page is complete as rendered, but for a long output
      if (live.dataset.more === "true") followStream(live);
      return;
    }
    followEvents(live);
    followStream(live);
  });
})();
