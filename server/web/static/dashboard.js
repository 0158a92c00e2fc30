// Fleetcast dashboard: plots (uPlot) and the staleness marker. The pages read fine
// without this file; live updates come from htmx's SSE extension (see base.html).
(function () {
  "use strict";
  function progressPlot(el, spec) {
    var outcomes = {};
    spec.points.forEach(function (p) { Object.keys(p.counts).forEach(function (k) { outcomes[k] = true; }); });
    var names = Object.keys(outcomes).sort();
    var xs = spec.points.map(function (p) { return p.at; });
    var data = [xs].concat(names.map(function (k) {
      return spec.points.map(function (p) { return p.counts[k] || 0; });
    }));
    var colors = { installed: "#17813a", failed: "#b3261e", rolled_back: "#b26a00", cancelled: "#5d6773" };
    var series = [{}].concat(names.map(function (k) {
      return { label: k, stroke: colors[k] || "#1f5fbf", width: 2 };
    }));
    return new uPlot({ width: Math.max(320, el.clientWidth || 600), height: 220, series: series,
      scales: { y: { range: [0, Math.max(1, spec.total)] } }, axes: [{}, { label: "devices" }] }, data, el);
  }

  function latencyPlot(el, spec) {
    var series = [{}].concat(spec.series.map(function (s) { return { label: s.label, stroke: s.color, width: 2 }; }));
    return new uPlot({ width: Math.max(320, el.clientWidth || 600), height: 240, series: series,
      scales: { x: { time: true, range: spec.range } }, axes: [{}, { label: "ms" }] }, [spec.x].concat(spec.series.map(function (s) { return s.values; })), el);
  }

  function drawPlots(root) {
    if (typeof uPlot === "undefined") { return; }
    root.querySelectorAll("[data-plot]").forEach(function (el) {
      if (el.dataset.drawn) { return; }
      var spec = JSON.parse(el.dataset.plot);
      el.dataset.drawn = "1";
      if (spec.kind === "progress") { progressPlot(el, spec); } else if (spec.kind === "latency") { latencyPlot(el, spec); }
    });
  }

  // A page's figures are live while its event stream is open; when it drops, every
  // "as of" line says so (the time shown stays that of the last figures read).
  var streamOpen = null;
  function markStale() {
    document.querySelectorAll("[data-as-of]").forEach(function (el) {
      el.classList.toggle("stale", streamOpen === false);
    });
  }
  document.addEventListener("htmx:sseOpen", function () { streamOpen = true; markStale(); });
  document.addEventListener("htmx:sseError", function () { streamOpen = false; markStale(); });
  document.addEventListener("htmx:sseClose", function () { streamOpen = false; markStale(); });

  document.addEventListener("DOMContentLoaded", function () {
    drawPlots(document);
  });
  document.addEventListener("htmx:afterSettle", function (e) { drawPlots(e.target); markStale(); });
})();
