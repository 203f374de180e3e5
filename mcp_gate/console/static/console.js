// The console's only script: local times, countdowns, and live updates over server-sent events.
"use strict";
(function () {
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function span(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return h > 0 ? h + " h " + pad(m) + " min" : m + ":" + pad(s);
  }
  function utcText(d) { return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }

  function localize(root) {
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) { return; }
      el.title = utcText(d);
      el.textContent = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    });
    tick(root);
  }

  function tick(root) {
    var now = Date.now();
    root.querySelectorAll("[data-expires]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-expires"));
      var left = (d - now) / 1000;
      el.textContent = left > 0 ? "in " + span(left) : "expired";
      el.title = utcText(d);
      el.classList.toggle("soon", left > 0 && left < 120);
    });
    root.querySelectorAll("[data-since]").forEach(function (el) {
      var d = new Date(el.getAttribute("data-since"));
      el.textContent = span((now - d) / 1000) + " ago";
      el.title = utcText(d);
    });
  }

  function refresh(el) {
    return fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "accept": "text/html" } })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.body.firstElementChild;
        if (!fresh || fresh.getAttribute("data-sig") === el.getAttribute("data-sig")) { return; }
        var focused = document.activeElement && el.contains(document.activeElement);
        el.replaceWith(fresh);
        localize(fresh);
        if (focused) { fresh.setAttribute("tabindex", "-1"); fresh.focus(); }
      });
  }

  function live() {
    if (!document.querySelector("[data-live]") || !window.EventSource) { return; }
    var status = document.getElementById("live-status");
    var source = new EventSource(document.body.getAttribute("data-prefix") + "/events");
    source.addEventListener("open", function () {
      document.body.setAttribute("data-live-connected", "yes");
      if (status) { status.textContent = "Updates live."; }
    });
    source.addEventListener("changed", function () {
      document.querySelectorAll("[data-live]").forEach(refresh);
    });
    source.addEventListener("ended", function () { source.close(); window.location.reload(); });
    source.addEventListener("error", function () {
      if (status) { status.textContent = "Reconnecting…"; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localize(document);
    window.setInterval(function () { tick(document); }, 1000);
    live();
  });
})();
