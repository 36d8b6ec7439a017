// evsys ui: live status of running runs and the log tail of a running run, by polling the
// server's JSON endpoints. Everything from the server is written with textContent.
"use strict";
(function () {
  var EVERY_MS = 2000;

  function running() {
    var ids = [];
    document.querySelectorAll(".status[data-status=running]").forEach(function (el) {
      var id = el.getAttribute("data-run");
      if (ids.indexOf(id) < 0) ids.push(id);
    });
    return ids;
  }

  function pollStatus() {
    var ids = running();
    if (!ids.length) return;
    var q = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
    fetch("/api/status?" + q).then(function (r) { return r.json(); }).then(function (data) {
      data.runs.forEach(function (run) {
        document.querySelectorAll(".status[data-run]").forEach(function (el) {
          if (el.getAttribute("data-run") !== run.run_id) return;
          el.textContent = run.status;
          el.setAttribute("data-status", run.status);
          el.className = "status st-" + run.status;
        });
        document.querySelectorAll("td.steps[data-run]").forEach(function (el) {
          if (el.getAttribute("data-run") !== run.run_id) return;
          el.textContent = (run.steps == null ? "" : run.steps) + (run.max_steps ? "/" + run.max_steps : "");
        });
      });
    }).catch(function () {}).finally(function () { if (running().length) setTimeout(pollStatus, EVERY_MS); });
  }

  function pollLog() {
    var log = document.getElementById("log");
    if (!log || !log.hasAttribute("data-running")) return;
    fetch("/api/log?id=" + encodeURIComponent(log.getAttribute("data-run")))
      .then(function (r) { return r.json(); })
      .then(function (data) {
        log.textContent = (data.lines || []).join("\n");
        if (data.status !== "running") log.removeAttribute("data-running");
      }).catch(function () {})
      .finally(function () { if (log.hasAttribute("data-running")) setTimeout(pollLog, EVERY_MS); });
  }

  // a replicate group's row lists its runs below it when its ▸ button is pressed
  function toggleGroup(button) {
    var open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", open ? "true" : "false");
    button.textContent = open ? "\u25be" : "\u25b8";
    document.querySelectorAll("tr.member").forEach(function (tr) {
      if (tr.getAttribute("data-member-of") === button.getAttribute("data-group")) tr.hidden = !open;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button.expand[data-group]").forEach(function (b) {
      b.addEventListener("click", function () { toggleGroup(b); });
    });
    if (running().length) setTimeout(pollStatus, EVERY_MS);
    setTimeout(pollLog, EVERY_MS);
  });
})();
