// Loom console: refreshes the parts of a page that carry data-refresh, and swaps the histogram when another input
// is picked. Same-origin requests only; the session cookie goes with them. No dependencies.
(function () {
  "use strict";

  function load(url, target) {
    return fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "loom-console" } })
      .then(function (res) {
        if (res.redirected && /\/ui\/login$/.test(new URL(res.url).pathname)) {
          window.location.assign(res.url);  // signed out (the token changed): back to the form
          return;
        }
        if (!res.ok) { target.setAttribute("data-stale", String(res.status)); return; }
        return res.text().then(function (html) {
          target.innerHTML = html;
          target.removeAttribute("data-stale");
          target.setAttribute("data-refreshed", String(Date.now()));
        });
      })
      .catch(function () { target.setAttribute("data-stale", "network"); });
  }

  function refresh(el) {
    var every = Math.max(1, parseFloat(el.getAttribute("data-every") || "5")) * 1000;
    var busy = false;
    window.setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      load(el.getAttribute("data-refresh"), el).then(function () { busy = false; }, function () { busy = false; });
    }, every);
  }

  function picker(select) {
    select.addEventListener("change", function () {
      var target = document.getElementById(select.getAttribute("data-target"));
      var url = select.getAttribute("data-url") + "?feature=" + encodeURIComponent(select.value);
      load(url, target);
      var here = new URL(window.location.href);
      here.searchParams.set("feature", select.value);
      window.history.replaceState(null, "", here.toString());
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("select[data-target]").forEach(picker);
  });
})();
