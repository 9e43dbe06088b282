// Live job panels (templates/jobs/_job_live.html). While a panel's websocket is open the server
// pushes every change, so the panel's own polling, its fallback for when the socket is down,
// skips its requests. Loaded by each page that shows a panel, perhaps more than once: idempotent.
(function () {
  "use strict";
  if (window.courseJobsLoaded) return;
  window.courseJobsLoaded = true;

  document.addEventListener("htmx:wsOpen", function (event) {
    event.target.setAttribute("data-live", "");
  });
  document.addEventListener("htmx:wsClose", function (event) {
    event.target.removeAttribute("data-live");
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (elt && elt.hasAttribute("data-poll") && elt.closest("[data-live]")) {
      event.preventDefault();
    }
  });
})();
