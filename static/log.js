// Live build log: follows the SSE stream, renders SGR colours from escaped text (no
// innerHTML anywhere), resumes after a dropped connection (EventSource sends
// Last-Event-ID by itself), and shows the final banner.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || !window.EventSource) return;
  var follow = document.getElementById("follow");
  var statusBadge = document.getElementById("status");
  var banner = document.getElementById("banner");
  var last = parseInt(log.dataset.after || "0", 10);

  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
  log.addEventListener("scroll", function () { follow.checked = atBottom(); });

  // Splits text on SGR sequences (ESC [ n ; … m) into spans with classes.
  function render(text, parent) {
    var classes = [];
    var parts = text.split(/\u001b\[([0-9;]*)m/);
    for (var i = 0; i < parts.length; i++) {
      if (i % 2 === 1) {
        var codes = parts[i] === "" ? ["0"] : parts[i].split(";");
        codes.forEach(function (c) {
          var n = parseInt(c, 10);
          if (n === 0) classes = [];
          else if (n === 1 || n === 3 || n === 4) classes.push("sgr-" + n);
          else if (n >= 30 && n <= 37) classes = classes.filter(function (k) { return k.indexOf("fg-") !== 0; }).concat("fg-" + n);
          else if (n >= 90 && n <= 97) classes = classes.filter(function (k) { return k.indexOf("fg-") !== 0; }).concat("fg-" + (n - 60));
          else if (n === 39) classes = classes.filter(function (k) { return k.indexOf("fg-") !== 0; });
        });
      } else if (parts[i]) {
        var span = document.createElement("span");
        span.textContent = parts[i];
        if (classes.length) span.className = classes.join(" ");
        parent.appendChild(span);
      }
    }
  }

  function addLine(line) {
    if (line.seq <= last) return;
    last = line.seq;
    var el = document.createElement("span");
    el.className = "line " + line.stream;
    el.dataset.seq = line.seq;
    render(line.text, el);
    log.appendChild(el);
    log.appendChild(document.createTextNode("\n"));
    if (follow.checked) log.scrollTop = log.scrollHeight;
  }

  function setStatus(status) {
    statusBadge.textContent = status;
    statusBadge.className = "badge " + status;
  }

  // Server-rendered lines lost their colours (no JS then); draw them again.
  Array.prototype.forEach.call(log.querySelectorAll(".line"), function (el) {
    var text = el.textContent; el.textContent = ""; render(text, el);
  });
  log.scrollTop = log.scrollHeight;
  if (log.dataset.finished === "true") return;

  var source = new EventSource(log.dataset.stream + "?after=" + last);
  source.addEventListener("log", function (e) { addLine(JSON.parse(e.data)); });
  source.addEventListener("status", function (e) { setStatus(JSON.parse(e.data).status); });
  source.addEventListener("end", function (e) {
    var status = JSON.parse(e.data).status;
    source.close();
    setStatus(status);
    var cancel = document.getElementById("cancel");
    if (cancel) cancel.hidden = true;
    banner.hidden = false;
    banner.className = "banner " + status;
    banner.textContent = "";
    if (status === "ready") {
      banner.appendChild(document.createTextNode("Ready — "));
      var a = document.createElement("a");
      a.href = log.dataset.url; a.textContent = log.dataset.url;
      banner.appendChild(a);
    } else {
      banner.textContent = status === "failed" ? "Failed — see the log above" : "Canceled";
    }
  });
})();
