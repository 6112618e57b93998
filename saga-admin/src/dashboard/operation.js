// The Operation page: follows the log over the SSE endpoint (the cookie authenticates the
// EventSource), cancels through the JSON API, and refreshes the summary and timeline when the
// stream ends with the verdict.
(function () {
  "use strict";
  const body = document.body;
  const base = body.dataset.base;
  const id = body.dataset.op;
  const api = base + "/api/v1/operations/" + encodeURIComponent(id);
  const log = document.getElementById("log");
  const streamState = document.getElementById("stream-state");
  const verdict = document.getElementById("verdict");

  function append(text) {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.textContent += text + "\n";
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  async function refresh() {
    try {
      const response = await fetch(location.pathname, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const part of ["summary", "timeline", "actions"]) {
        const fresh = page.getElementById(part);
        const old = document.getElementById(part);
        if (fresh && old) old.replaceWith(fresh);
      }
      wireCancel();
    } catch (e) { /* the next event refreshes again */ }
  }

  function showVerdict(end) {
    const status = end.outcome ? end.outcome.status : end.status;
    verdict.hidden = false;
    verdict.className = "card verdict " + status;
    verdict.dataset.status = status;
    verdict.textContent = end.outcome
      ? "Verdict: " + end.outcome.text
      : "Stopped without an outcome: " + (end.problem || status.replace(/_/g, " "));
  }

  log.textContent = "";
  const source = new EventSource(api + "/log/stream");
  source.addEventListener("open", function () { streamState.textContent = "live"; });
  source.addEventListener("line", function (e) { append(JSON.parse(e.data).text); });
  source.addEventListener("missed", function (e) {
    append("(" + JSON.parse(e.data).missed + " lines skipped: download the log for all of them)");
  });
  source.addEventListener("end", function (e) {
    source.close();
    streamState.textContent = "ended";
    showVerdict(JSON.parse(e.data));
    refresh();
  });
  source.addEventListener("error", function () {
    if (source.readyState !== EventSource.CLOSED) streamState.textContent = "reconnecting…";
  });

  function wireCancel() {
    const button = document.getElementById("cancel-button");
    const form = document.getElementById("cancel-form");
    const message = document.getElementById("cancel-message");
    if (!button || !form) return;
    button.onclick = function () { form.hidden = false; button.hidden = true; document.getElementById("cancel-reason").focus(); };
    document.getElementById("cancel-back").onclick = function () { form.hidden = true; button.hidden = false; };
    form.onsubmit = async function (event) {
      event.preventDefault();
      const reason = document.getElementById("cancel-reason").value.trim();
      if (!reason) { message.textContent = "Give a reason."; message.className = "error"; return; }
      message.className = "muted";
      message.textContent = "Recording the cancel…";
      try {
        const response = await fetch(api + "/cancel", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ reason: reason }),
        });
        const answer = await response.json();
        if (response.status === 202) {
          form.hidden = true;
          message.className = "";
          message.dataset.state = "recorded";
          message.textContent = "Cancel recorded by " + answer.actor + ": rolling back… the verdict follows.";
        } else {
          message.className = "error";
          message.textContent = response.status + ": " + answer.message;
        }
      } catch (e) {
        message.className = "error";
        message.textContent = "Cannot reach the server: " + e;
      }
    };
  }
  wireCancel();
})();
