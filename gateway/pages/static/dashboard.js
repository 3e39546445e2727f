// Keeps /dashboard live: snapshots arrive as server-sent events (/dashboard/events); when the stream
// cannot be opened (an old browser, a proxy that refuses it, too many open dashboards) the page polls
// /dashboard/data instead and tries the stream again now and then. Rows are redrawn with the markup of
// templates/dashboard.html, from text only (never HTML from the data).
(function () {
  "use strict";

  var POLL_MS = 2000;
  var STALE_MS = 5000;
  var RETRY_STREAM_EVERY = 15; // polls between two attempts to get the stream back

  var body = document.body;
  var eventsUrl = body.getAttribute("data-events-url");
  var dataUrl = body.getAttribute("data-data-url");
  var connection = document.getElementById("connection");
  var lastUpdate = 0;
  var source = null;
  var pollTimer = null;
  var polls = 0;
  var windowSeconds = 60; // replaced by each snapshot's own

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }

  // The same rules as the template's filters (gateway/pages/dashboard.py).
  function rate(perSecond) { return perSecond.toFixed(2) + "/s"; }
  function percent(fraction) { return (fraction * 100).toFixed(1) + "%"; }
  function milliseconds(ms) { return ms === null ? "\u2014" : ms.toFixed(1) + " ms"; }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function duration(seconds) {
    var whole = Math.floor(seconds);
    var days = Math.floor(whole / 86400), hours = Math.floor(whole % 86400 / 3600);
    var minutes = Math.floor(whole % 3600 / 60), secs = whole % 60;
    if (days) return days + "d " + hours + "h";
    if (hours) return hours + "h " + pad(minutes) + "m";
    if (minutes) return minutes + "m " + pad(secs) + "s";
    return secs + "s";
  }

  function badge(prefix, state, text) {
    return el("span", "badge " + prefix + state, text === undefined ? state : text);
  }

  function figure(field, text) {
    var span = el("span", null, text);
    span.setAttribute("data-figure", field);
    return span;
  }

  // "0.00/s · 0.0% 5xx · p99 —": the requests this instance answered in the window.
  function instanceFigures(instance) {
    var span = el("span", "figures");
    span.title = "Requests this instance answered in the last " + windowSeconds + " s";
    span.appendChild(figure("rate", rate(instance.requestsPerSecond)));
    span.appendChild(document.createTextNode(" \u00b7 "));
    span.appendChild(figure("errors", percent(instance.errorRate)));
    span.appendChild(document.createTextNode(" 5xx \u00b7 p99 "));
    span.appendChild(figure("p99", milliseconds(instance.p99Ms)));
    return span;
  }

  function instanceItem(instance) {
    var li = el("li", "instance");
    li.setAttribute("data-instance", instance.url);
    li.setAttribute("data-state", instance.state);
    li.appendChild(badge("state-", instance.state));
    li.appendChild(el("code", null, instance.url));
    if (instance.breaker) {
      li.appendChild(badge("breaker-", instance.breaker.state, "breaker " + instance.breaker.state));
    }
    li.appendChild(el("span", "inflight", instance.inFlight + " in flight"));
    li.appendChild(instanceFigures(instance));
    if (instance.lastError) li.appendChild(el("span", "error", instance.lastError));
    return li;
  }

  function number(field, text) {
    var td = el("td", "num", text);
    td.setAttribute("data-field", field);
    return td;
  }

  function serviceRow(service) {
    var tr = el("tr", "service");
    tr.setAttribute("data-service", service.name);
    tr.setAttribute("data-state", service.state);
    var th = el("th");
    th.setAttribute("scope", "row");
    th.appendChild(el("span", "name", service.name));
    th.appendChild(el("span", "routes", service.routes.join(" ")));
    tr.appendChild(th);
    var state = el("td");
    state.appendChild(badge("state-", service.state));
    tr.appendChild(state);
    var cell = el("td");
    var list = el("ul", "instances");
    service.instances.forEach(function (instance) { list.appendChild(instanceItem(instance)); });
    if (!service.instances.length) list.appendChild(el("li", "instance none", "no instances"));
    cell.appendChild(list);
    tr.appendChild(cell);
    tr.appendChild(number("rate", rate(service.requestsPerSecond)));
    tr.appendChild(number("errors", percent(service.errorRate)));
    tr.appendChild(number("p99", milliseconds(service.p99Ms)));
    tr.appendChild(number("rateLimited", service.rateLimited));
    return tr;
  }

  function render(snapshot) {
    var gateway = snapshot.gateway, config = snapshot.config, last = config.lastReload;
    var status = document.getElementById("status");
    status.textContent = gateway.status;
    status.setAttribute("data-status", gateway.status);
    setText("version", gateway.version);
    setText("uptime", duration(gateway.uptimeSeconds));
    setText("config", "revision " + config.revision + " \u00b7 " + config.digest);
    var reload = document.getElementById("reload");
    var reloadError = document.getElementById("reload-error");
    if (last === null) {
      reload.textContent = "none since start";
      reload.setAttribute("data-ok", "none");
    } else {
      reload.textContent = (last.ok ? "ok at " : "failed at ") + last.at;
      reload.setAttribute("data-ok", last.ok ? "true" : "false");
    }
    reloadError.textContent = last && !last.ok && last.error ? last.error : "";
    reloadError.hidden = !(last && !last.ok);
    setText("updated", snapshot.generatedAt);
    windowSeconds = snapshot.windowSeconds;
    var rows = document.createDocumentFragment();
    snapshot.services.forEach(function (service) { rows.appendChild(serviceRow(service)); });
    var tbody = document.getElementById("services");
    tbody.replaceChildren(rows);
    lastUpdate = Date.now();
  }

  function setMode(mode, text) {
    connection.setAttribute("data-mode", mode);
    connection.textContent = text;
  }

  function openStream() {
    if (!window.EventSource) return false;
    source = new EventSource(eventsUrl);
    source.onmessage = function (message) {
      setMode("live", "live");
      render(JSON.parse(message.data));
    };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused for good (not an event stream, or an error status): poll instead.
        source = null;
        startPolling();
      } else {
        setMode("reconnecting", "reconnecting\u2026");
      }
    };
    return true;
  }

  function poll() {
    polls += 1;
    if (polls % RETRY_STREAM_EVERY === 0 && openStream()) {
      stopPolling();
      return;
    }
    fetch(dataUrl, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (envelope) {
        setMode("polling", "polling every " + POLL_MS / 1000 + " s");
        render(envelope.data);
      })
      .catch(function () { setMode("offline", "gateway unreachable"); });
  }

  function startPolling() {
    if (pollTimer !== null) return;
    poll();
    pollTimer = window.setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer !== null) window.clearInterval(pollTimer);
    pollTimer = null;
  }

  // Say so when nothing came for a while, whatever the transport believes.
  window.setInterval(function () {
    if (lastUpdate && Date.now() - lastUpdate > STALE_MS && connection.getAttribute("data-mode") !== "offline") {
      setMode("stale", "no update for " + Math.round((Date.now() - lastUpdate) / 1000) + " s");
    }
  }, 1000);

  setMode("connecting", "connecting\u2026");
  if (!openStream()) startPolling();
})();
