/* NEXUS dashboard: live updates for server-rendered pages. Plain JS, no build.
 *
 * The server renders everything. This script listens to the journal's SSE
 * streams and, when there is news, fetches `/fragments/...`, which answers
 * {replace: {name: html}, append: {name: html}, state: {...}} rendered by the
 * same templates as the page; elements marked data-fragment="name" take it.
 */
(function () {
  "use strict";

  const body = document.body;
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  document.documentElement.classList.add("js");

  /* -- times: local clock in titles, relative ages kept fresh ------------------ */

  const clock = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function ago(ms) {
    const s = ms / 1000;
    if (s < 10) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function refreshTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.title = clock.format(d);
      if (t.hasAttribute("data-ago")) t.textContent = ago(Date.now() - d.getTime());
    });
  }

  /* -- feedback ------------------------------------------------------------------ */

  let toastTimer = null;
  function toast(message, kind) {
    const el = document.querySelector("[data-toast]");
    if (!el) return;
    el.textContent = message;
    el.className = "toast" + (kind === "error" ? " error" : "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { el.hidden = true; }, 5000);
  }

  function liveState(state) {
    const el = document.querySelector("[data-live]");
    if (!el) return;
    const text = { live: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", ended: "Ended", off: "Offline" };
    el.hidden = false;
    el.dataset.state = state;
    el.querySelector("[data-live-text]").textContent = text[state] || state;
  }

  /* -- fragments ------------------------------------------------------------------- */

  function toLogin() {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  async function fetchFragments(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { toLogin(); throw new Error("signed out"); }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }

  function slot(name) {
    return document.querySelector('[data-fragment="' + CSS.escape(name) + '"]');
  }

  /* Apply a fragment answer; returns the appended elements. */
  function apply(data) {
    Object.entries(data.replace || {}).forEach(function (entry) {
      const el = slot(entry[0]);
      if (!el) return;
      // A fold the reader opened (a long tool result) stays open across refreshes.
      const open = Array.from(el.querySelectorAll("details[id][open]"), function (d) { return d.id; });
      el.innerHTML = entry[1];
      open.forEach(function (id) {
        const d = el.querySelector("details#" + CSS.escape(id));
        if (d) d.open = true;
      });
      refreshTimes(el);
    });
    const added = [];
    Object.entries(data.append || {}).forEach(function (entry) {
      const el = slot(entry[0]);
      if (!el) return;
      const tpl = document.createElement("template");
      tpl.innerHTML = entry[1];
      const nodes = Array.from(tpl.content.children);
      el.append(tpl.content);
      nodes.forEach(function (n) { n.classList.add("fresh"); refreshTimes(n); });
      added.push.apply(added, nodes);
    });
    return added;
  }

  /* Run `task` soon, at most one at a time; calls while it runs queue one more run. */
  function coalesce(task, delayMs) {
    let timer = null, running = false, again = false;
    async function run() {
      timer = null;
      if (running) { again = true; return; }
      running = true;
      try { await task(); } catch (err) { console.warn("nexus: refresh failed", err); }
      running = false;
      if (again) { again = false; schedule(); }
    }
    function schedule(now) {
      if (timer === null) timer = setTimeout(run, now ? 0 : delayMs);
    }
    return schedule;
  }

  /* An EventSource that reports its state and comes back if the browser gives up
   * (a non-200 answer closes an EventSource for good). `catchUp` runs on every
   * (re)connection, and when the browser gives up (its fetch finds out whether
   * we were signed out). */
  function live(url, handlers, catchUp) {
    let es = null, stopped = false;
    function open() {
      liveState("connecting");
      es = new EventSource(url);
      es.addEventListener("open", function () { liveState("live"); catchUp(); });
      es.addEventListener("error", function () {
        if (stopped) return;
        if (es.readyState === EventSource.CLOSED) {
          liveState("off");
          catchUp();
          setTimeout(function () { if (!stopped) open(); }, 5000);
        } else {
          liveState("reconnecting");
        }
      });
      Object.entries(handlers).forEach(function (h) { es.addEventListener(h[0], h[1]); });
    }
    open();
    return {
      stop: function (state) { stopped = true; es.close(); liveState(state || "off"); },
    };
  }

  let refreshPage = null;

  /* -- live tables ------------------------------------------------------------------ */

  /* A table whose rows (tr[data-id][data-key]) a fragment replaces: refresh it from
   * `url`, flashing the rows whose key changed (`newRows` also flashes rows that were
   * not there before), on every journal event of the stream and, if given, every
   * `everyMs`. */
  function liveTable(slotName, url, delayMs, newRows, everyMs) {
    const rows = slot(slotName);
    function keys() {
      const m = new Map();
      rows.querySelectorAll("tr[data-id]").forEach(function (tr) { m.set(tr.dataset.id, tr.dataset.key); });
      return m;
    }
    refreshPage = coalesce(async function () {
      const before = keys();
      apply(await fetchFragments(url()));
      rows.querySelectorAll("tr[data-id]").forEach(function (tr) {
        const was = before.get(tr.dataset.id);
        if ((newRows || was !== undefined) && was !== tr.dataset.key) tr.classList.add("changed");
      });
    }, delayMs);
    if (everyMs) setInterval(function () { refreshPage(); }, everyMs);
    // Without Last-Event-ID the stream starts "now": refresh on (re)open so that
    // nothing between the page's render and the connection is missed.
    live("/api/v1/events/stream", { journal: function () { refreshPage(); } }, function () { refreshPage(); });
  }

  function sessionsPage() {
    liveTable("rows", function () { return "/fragments/sessions" + location.search; }, 500, true);
  }

  // Heartbeats are not journal events: the workers page also refreshes every
  // heartbeat interval (a session that starts or ends is journal news).
  function workersPage() {
    const everyMs = Math.max(1000, (Number(body.dataset.heartbeatS) || 3) * 1000);
    liveTable("worker-rows", function () { return "/fragments/workers"; }, 250, false, everyMs);
  }

  // The overview's figures come from the journal's rollup: refreshed on journal news,
  // at most once a second (each refresh folds what was committed meanwhile).
  function overviewPage() {
    refreshPage = coalesce(async function () {
      apply(await fetchFragments("/fragments/overview" + location.search));
    }, 1000);
    live("/api/v1/events/stream", { journal: function () { refreshPage(); } }, function () { refreshPage(); });
  }

  /* -- one session ------------------------------------------------------------------ */

  function sessionPage() {
    const id = body.dataset.sessionId;
    let lastSeq = Number(body.dataset.lastSeq) || 0;
    let stream = null;

    function nearBottom() {
      return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 120;
    }

    function finish(state) {
      if (body.dataset.finished === "true" && !stream) return;
      body.dataset.finished = "true";
      if (stream) { stream.stop("ended"); stream = null; }
      if (state) liveState(state);
    }

    refreshPage = coalesce(async function () {
      const follow = nearBottom();
      const data = await fetchFragments("/fragments/sessions/" + encodeURIComponent(id) + "?after_seq=" + lastSeq);
      const added = apply(data);
      const st = data.state || {};
      if (st.last_seq > lastSeq) { lastSeq = st.last_seq; body.dataset.lastSeq = String(lastSeq); }
      if (st.title) document.title = st.title;
      if (st.finished) finish("ended");
      if (follow && added.length) added[added.length - 1].scrollIntoView({ block: "nearest", behavior: "smooth" });
    }, 60);

    if (body.dataset.finished === "true") return;
    // ?after= skips the events the page already shows (reconnects send Last-Event-ID).
    stream = live("/api/v1/sessions/" + encodeURIComponent(id) + "/stream?after=" + lastSeq, {
      journal: function (ev) { if (Number(ev.lastEventId) > lastSeq) refreshPage(); },
      // The server dropped this slow client; EventSource reconnects from the last
      // id by itself (Last-Event-ID), and the fetch catches up meanwhile.
      resync: function () { refreshPage(true); },
      end: function () { finish("ended"); refreshPage(true); },
    }, function () { refreshPage(); });
  }

  /* -- controls ----------------------------------------------------------------------- */

  // Buttons with data-post (registered actions: replay, kill, pause...).
  document.addEventListener("click", async function (ev) {
    const btn = ev.target.closest("button[data-post]");
    if (!btn) return;
    ev.preventDefault();
    if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
    btn.disabled = true;
    try {
      const r = await fetch(btn.dataset.post, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf },
        body: btn.dataset.body || "{}",
      });
      if (r.status === 401) { toLogin(); return; }
      const data = await r.json().catch(function () { return {}; });
      if (!r.ok) throw new Error(data.detail || "HTTP " + r.status);
      if (btn.dataset.redirect) {
        location.assign(btn.dataset.redirect.replace("{id}", encodeURIComponent(data.id || "")));
        return;
      }
      toast(btn.dataset.done || "Done");
      if (refreshPage) refreshPage(true);
    } catch (err) {
      toast(err.message, "error");
    } finally {
      btn.disabled = false;
    }
  });

  // The list's filters go into the URL without their empty fields (a view is a
  // link to share: `/?q=report&sort=-cost`, not nine parameters of which seven are blank).
  document.querySelectorAll("form[data-filters]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const params = new URLSearchParams();
      new FormData(form).forEach(function (value, key) { if (String(value).trim()) params.append(key, value); });
      if (params.get("sort") === "-created") params.delete("sort");
      const query = params.toString();
      location.assign("/" + (query ? "?" + query : ""));
    });
  });

  document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { el.form.requestSubmit(); });
  });

  // The budget fields show the chosen agent's limits as placeholders.
  document.querySelectorAll("select[data-agent-limits]").forEach(function (select) {
    select.addEventListener("change", function () {
      const opt = select.selectedOptions[0];
      let limits = {};
      try { limits = JSON.parse(opt ? opt.dataset.limits || "{}" : "{}"); } catch (err) { limits = {}; }
      select.form.querySelectorAll("input[data-limit]").forEach(function (input) {
        const v = limits[input.dataset.limit];
        input.placeholder = v === null || v === undefined ? "no limit" : String(v);
      });
    });
  });

  // Choosing a day on the overview makes its range a custom one.
  document.querySelectorAll("input[data-range-day]").forEach(function (input) {
    input.addEventListener("change", function () {
      const range = input.form.querySelector("select[data-range]");
      if (range) range.value = "custom";
    });
  });

  refreshTimes(document);
  setInterval(function () { refreshTimes(document); }, 15000);

  if (body.dataset.page === "sessions") sessionsPage();
  if (body.dataset.page === "session") sessionPage();
  if (body.dataset.page === "workers") workersPage();
  if (body.dataset.page === "overview") overviewPage();
})();
