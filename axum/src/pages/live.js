// The live refresh of the dtasks pages: every `data-refresh` milliseconds, read the page
// again and swap in its `#live` section, so that forms outside it keep what was typed.
// When an instance finishes (`data-finished` flips), load the page again whole: its
// forms go. Without this script the pages work the same and are reloaded by hand.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var every = Number(live.getAttribute("data-refresh")) || 2000;
  if (live.getAttribute("data-finished") === "true") return;
  var busy = false;
  function tick() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(location.href, { cache: "no-store", headers: { accept: "text/html" } })
      .then(function (res) { return res.ok ? res.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var next = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (!next) return;
        if (next.getAttribute("data-finished") !== live.getAttribute("data-finished")) {
          location.replace(location.href);
          return;
        }
        if (next.innerHTML !== live.innerHTML) live.innerHTML = next.innerHTML;
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }
  setInterval(tick, every);
})();
