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
  document.addEventListener("htmx:sendError", lost);
  document.addEventListener("htmx:timeout", lost);
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail && event.detail.successful) { var b = banner(); if (b) { b.hidden = true; } }
  });
})();
