// Niceties only; every action works without this file (progressive enhancement).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Filter selects on the timeline apply as soon as they change.
  document.querySelectorAll("form.filters select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.requestSubmit(); });
  });
  // Move focus to a status message after an action, so screen readers announce it.
  var flash = document.querySelector(".flash, .verification");
  if (flash) { flash.setAttribute("tabindex", "-1"); flash.focus(); }
});
