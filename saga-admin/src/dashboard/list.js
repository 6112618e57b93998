// The list page: refreshes the table every 5 s while an Operation of it is unfinished, and
// builds the report link of a chosen period.
(function () {
  "use strict";
  const unfinished = function () {
    return document.querySelector("#operations tr[data-finished='false']") !== null;
  };
  async function refresh() {
    if (!unfinished()) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("operations");
      const old = document.getElementById("operations");
      if (fresh && old) old.replaceWith(fresh);
    } catch (e) { /* try again at the next tick */ }
  }
  setInterval(refresh, 5000);

  const form = document.getElementById("report-form");
  if (form) {
    form.onsubmit = function (event) {
      event.preventDefault();
      const since = document.getElementById("report-since").value;
      const until = document.getElementById("report-until").value;
      const message = document.getElementById("report-message");
      if (!since || !until) { message.textContent = "Choose both days."; return; }
      // Whole UTC days: from the first day's start to the end of the last day.
      const end = new Date(until + "T00:00:00Z");
      end.setUTCDate(end.getUTCDate() + 1);
      const url = form.action + "?since=" + encodeURIComponent(since + "T00:00:00Z") +
        "&until=" + encodeURIComponent(end.toISOString());
      message.textContent = "";
      location.href = url;
    };
  }
})();
