// Proconsul UI: a lost connection to the agent is shown, and the live section that lost it asks again.
(function () {
  "use strict";
  var banner = function () { return document.getElementById("connection"); };
  function lost(event) {
    var b = banner();
    if (b) { b.hidden = false; }
    var elt = event.detail && event.detail.elt;
    if (elt && elt.classList && elt.classList.contains("live")) {
      setTimeout(function () { if (document.body.contains(elt)) { htmx.trigger(elt, "ui:retry"); } }, 1000);
    }
  }
  // A live section replaced by another request (the search form) gives up its waiting request: each
  // waiting request holds one of the browser's few connections to the agent.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target !== event.detail.elt && target.classList && target.classList.contains("live")) {
      htmx.trigger(target, "htmx:abort");
    }
  });
  // Leaving the page (or it going into the back/forward cache) ends its waiting requests; a page shown
  // again from that cache asks afresh.
  function each(fn) { Array.prototype.forEach.call(document.querySelectorAll(".live"), fn); }
  window.addEventListener("pagehide", function () { each(function (elt) { htmx.trigger(elt, "htmx:abort"); }); });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { each(function (elt) { htmx.trigger(elt, "ui:retry"); }); }
  });
  document.addEventListener("htmx:sendError", lost);
  document.addEventListener("htmx:timeout", lost);
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail && event.detail.successful) { var b = banner(); if (b) { b.hidden = true; } }
  });
})();
