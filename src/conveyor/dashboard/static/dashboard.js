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
