// Conveyor dashboard: the job page's live state, from the server's events
// (/jobs/ID/events, one WatchJob stream on the server), and pages that keep themselves
// fresh (the overview). No framework; nothing inline.
"use strict";

// Fetch this page again and swap in its <main> without navigating away: the one way a page
// here renews itself. A lost session answers with the login page: go there instead.
const refreshMain = async () => {
  const answer = await fetch(window.location.href, { credentials: "same-origin" });
  if (answer.redirected) {
    window.location.assign(answer.url);
    return;
  }
  if (!answer.ok) return;
  const page = new DOMParser().parseFromString(await answer.text(), "text/html");
  const fresh = page.querySelector("main");
  if (fresh) document.querySelector("main").replaceWith(fresh);
};

// A page with an element marked data-refresh-seconds (the overview) renews itself that
// often while its tab is visible, and at once when the tab shows again; never while the
// keyboard's focus is inside <main> (the swap would drop it), nor two fetches at a time.
(function () {
  const marked = document.querySelector("[data-refresh-seconds]");
  if (!marked) return;
  const every = 1000 * Number(marked.dataset.refreshSeconds);
  let timer = null;
  let busy = false;
  const visible = () => document.visibilityState === "visible";
  const tick = async () => {
    timer = null;
    busy = true;
    const focused = document.activeElement;
    if (!focused || focused === document.body || !document.querySelector("main").contains(focused)) {
      try {
        await refreshMain();
      } catch (error) {
        // The dashboard is unreachable for now: the next tick tries again.
      }
    }
    busy = false;
    if (visible() && timer === null) timer = setTimeout(tick, every);
  };
  document.addEventListener("visibilitychange", () => {
    if (!visible()) {
      clearTimeout(timer);
      timer = null;
    } else if (timer === null && !busy) {
      tick();
    }
  });
  if (visible()) timer = setTimeout(tick, every);
})();

(function () {
  const live = document.getElementById("job-live");
  if (!live || live.dataset.terminal === "true") return;

  const text = (id, value) => {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  };

  const source = new EventSource(live.dataset.events);
  source.addEventListener("job", (message) => {
    const job = JSON.parse(message.data);
    const state = document.getElementById("job-state");
    state.textContent = job.state;
    state.className = "state state-" + job.state.toLowerCase();
    const bar = document.getElementById("job-progress");
    bar.value = job.progress;
    bar.textContent = job.progress + "%";
    text("job-progress-text", job.progress + "%");
    text("job-progress-message", job.progress_message);
    text("job-attempt", job.attempt + " of " + job.max_attempts);
    text("job-blocked", job.blocked_reason || "\u2014");
    text("job-error", job.error || "\u2014");
  });
  // The watch ended (the job finished): no reconnecting; show what it left (result,
  // attempts, artifacts, the retry button).
  source.addEventListener("end", () => {
    source.close();
    refreshMain();
  });
})();

// The workers page: each row's live status from the server's events (/workers/events: one
// WatchWorkerStatus stream per worker on the server), and Pause / Resume sent without
// leaving the page (Drain goes through its confirmation page).
(function () {
  const table = document.getElementById("workers");
  if (!table) return;
  const rows = new Map();
  table.querySelectorAll("tr[data-worker]").forEach((row) => rows.set(row.dataset.worker, row));
  const notice = document.getElementById("workers-message");

  // Only what the state allows: pause a running worker, resume a paused one, drain either.
  const allow = (row, state) => {
    const allowed = {
      pause: state === "RUNNING",
      resume: state === "PAUSED",
      drain: state === "RUNNING" || state === "PAUSED",
    };
    row.querySelectorAll("button[data-action]").forEach((button) => {
      button.disabled = !allowed[button.dataset.action];
    });
  };

  const setText = (el, value) => {
    if (el.textContent !== String(value)) el.textContent = value; // no needless announcements
  };

  const showJobs = (cell, worker) => {
    const list = document.createElement("ul");
    worker.running_jobs.forEach((job) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/jobs/" + encodeURIComponent(job.job_id);
      link.textContent = job.job_id;
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = job.progress;
      bar.textContent = job.progress + "%";
      bar.setAttribute("aria-label", "Progress of job " + job.job_id);
      const percent = document.createElement("span");
      percent.className = "job-progress";
      percent.textContent = job.progress + "%";
      item.append(link, " " + job.type + " ", bar, " ", percent);
      list.append(item);
    });
    const count = document.createElement("span");
    count.textContent = worker.running_jobs.length + " of " + worker.concurrency;
    cell.replaceChildren(count, list);
  };

  const source = new EventSource(table.dataset.events);
  source.addEventListener("worker", (message) => {
    const worker = JSON.parse(message.data);
    const row = rows.get(worker.worker_id);
    if (!row) return;
    const state = row.querySelector(".worker-state .state");
    const shown = worker.reachable ? worker.state : "UNREACHABLE";
    setText(state, shown);
    state.className = "state state-" + shown.toLowerCase();
    setText(row.querySelector(".worker-problem"), worker.reachable ? "" : worker.error);
    allow(row, shown);
    if (!worker.reachable) return; // the rest keeps its last known values
    showJobs(row.querySelector(".worker-jobs"), worker);
    setText(row.querySelector(".worker-processed"), worker.processed);
    setText(row.querySelector(".worker-failed"), worker.failed);
  });
  // Every worker's stream ended (stopped or unreachable): no reconnecting.
  source.addEventListener("end", () => source.close());

  table.querySelectorAll("form.worker-live").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      notice.textContent = "";
      const answer = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        credentials: "same-origin",
        redirect: "manual",
      });
      // Done: the server redirects back here, and the events show the new state.
      if (answer.type === "opaqueredirect" || answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const heading = page.querySelector("main h1");
      notice.textContent = heading ? heading.textContent : "Refused (HTTP " + answer.status + ").";
    });
  });
})();
