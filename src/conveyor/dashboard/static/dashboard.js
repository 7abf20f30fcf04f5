// Conveyor dashboard: the job page's live state, from the server's events
// (/jobs/ID/events, one WatchJob stream on the server). No framework; nothing inline.
"use strict";

(function () {
  const live = document.getElementById("job-live");
  if (!live || live.dataset.terminal === "true") return;

  const text = (id, value) => {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  };

  // The job ended: fetch this page again and swap in its <main> (result, attempts,
  // artifacts, the retry button) without navigating away.
  const refresh = async () => {
    const answer = await fetch(window.location.href, { credentials: "same-origin" });
    if (!answer.ok) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.querySelector("main");
    if (fresh) document.querySelector("main").replaceWith(fresh);
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
  // The watch ended (the job finished): no reconnecting; show what it left.
  source.addEventListener("end", () => {
    source.close();
    refresh();
  });
})();
