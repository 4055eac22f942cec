// The scanning page: keyboard first. r real, b bogus, s skip, u undo, ? help.
// The next few candidates are fetched and their images loaded ahead, so a key shows the next
// stamp at once; verdicts go to the server one after another (undo must follow its verdict).
"use strict";
(function () {
  const PREFETCH = 6, LOW = 3;
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  let session = null, scanner = null, order = null;
  let queue = [];          // items not yet shown, images loading or loaded
  let current = null;      // the item on screen
  let shownAt = 0;         // performance.now() when the current image was on screen
  let chain = Promise.resolve();
  let fetching = false, exhausted = false;
  let progress = {done: 0, total: 0};
  let sitting = {n: 0, first: 0};

  function say(msg) { $("status").textContent = msg || ""; }

  async function api(method, path, body) {
    const init = {method, headers: {}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let doc = {};
    try { doc = await r.json(); } catch (e) { doc = {error: "HTTP " + r.status}; }
    return {status: r.status, doc};
  }

  function preload(item) {
    item.image = new Image();
    item.ready = new Promise((resolve) => {
      item.image.onload = item.image.onerror = () => resolve();
    });
    item.image.src = item.img;
    return item;
  }

  function showProgress() {
    let rate = "";
    if (sitting.n > 1) {
      const hours = (performance.now() - sitting.first) / 3.6e6;
      if (hours > 0) rate = ` · ${Math.round((sitting.n - 1) / hours)} verdicts an hour`;
    }
    $("progress").textContent =
      `${progress.done} of ${progress.total} judged by ${scanner} · order: ${order}${rate}`;
  }

  async function openSession() {
    const r = await api("POST", "api/session", {scanner, order});
    if (r.status !== 200) { say(r.doc.error); return false; }
    session = r.doc.session;
    progress = r.doc.progress;
    return true;
  }

  async function refill() {
    if (fetching || exhausted || queue.length >= LOW) return;
    fetching = true;
    try {
      const r = await api("GET", `api/next?session=${session}&n=${PREFETCH - queue.length}`);
      if (r.status === 404 && await openSession()) { fetching = false; return refill(); }
      if (r.status !== 200) { say(r.doc.error); return; }
      progress = r.doc.progress;
      if (r.doc.items.length === 0) exhausted = true;
      for (const item of r.doc.items) queue.push(preload(item));
    } finally {
      fetching = false;
    }
    if (!current) show();
  }

  function fill(id, value) { $(id).textContent = value === null || value === undefined ? "–" : value; }

  async function show() {
    current = queue.shift() || null;
    document.body.dataset.state = "scanning";
    if (!current) {
      $("scan").hidden = true;
      $("done").hidden = !exhausted;
      showProgress();
      if (!exhausted) refill();
      return;
    }
    $("scan").hidden = false;
    $("done").hidden = true;
    const it = current;
    fill("stamp_id", it.stamp_id); fill("night", it.night);
    fill("score", it.score.toFixed(4)); fill("threshold", it.threshold.toFixed(4));
    fill("model_version", it.model_version);
    const alert = "objectId" in it;
    document.body.classList.toggle("alerts", alert);
    if (alert) {
      fill("objectId", it.objectId); fill("band", it.band);
      fill("magpsf", it.magpsf === null ? null : it.magpsf.toFixed(2));
      fill("radec", it.ra === null ? null : `${it.ra.toFixed(5)}, ${it.dec.toFixed(5)}`);
      const s = it.drb !== undefined ? ["drb", it.drb] : ["reliability", it.reliability];
      fill("survey", s[1] === null || s[1] === undefined ? null : `${s[0]} ${s[1].toFixed(3)}`);
    }
    $("stamp").src = it.img;
    await it.ready;
    if (current === it) {
      shownAt = performance.now();
      $("stamp").dataset.stampId = String(it.stamp_id);
    }
    showProgress();
    refill();
  }

  function judge(verdict) {
    if (!current || !shownAt) return;
    const it = current, seconds = (performance.now() - shownAt) / 1000;
    shownAt = 0;
    if (sitting.n === 0) sitting.first = performance.now();
    sitting.n += 1;
    document.body.dataset.state = verdict;
    chain = chain.then(async () => {
      let r = await api("POST", "api/verdict", {session, season: it.season, stamp_id: it.stamp_id,
                                                verdict, seconds});
      if (r.status === 404 && r.doc.error.startsWith("unknown session") && await openSession()) {
        r = await api("POST", "api/verdict", {session, season: it.season, stamp_id: it.stamp_id,
                                              verdict, seconds});
      }
      if (r.status === 200) { progress = r.doc.progress; say(""); }
      else if (r.status !== 409) say(`verdict on ${it.stamp_id} not saved: ${r.doc.error}`);
      showProgress();
    });
    show();
  }

  function undo() {
    chain = chain.then(async () => {
      const r = await api("POST", "api/undo", {session});
      if (r.status !== 200) { say(r.doc.error); return; }
      progress = r.doc.progress;
      const u = r.doc.undone;
      if (!u) { say("nothing to undo"); return; }
      say(`undone: ${u.verdict} on ${u.item ? u.item.stamp_id : "?"}`);
      if (u.item) {
        if (current) queue.unshift(current);
        queue.unshift(preload(u.item));
        current = null;
        exhausted = false;
        await show();
      }
    });
  }

  function toggleHelp(force) {
    const h = $("help");
    h.hidden = force === undefined ? !h.hidden : !force;
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || session === null) return;
    if (e.target instanceof HTMLInputElement) return;
    const k = e.key;
    if (k === "?") { toggleHelp(); e.preventDefault(); return; }
    if (k === "Escape") { toggleHelp(false); return; }
    if (!$("help").hidden) return;
    if (k === "r") judge("real");
    else if (k === "b") judge("bogus");
    else if (k === "s") judge("skip");
    else if (k === "u") undo();
    else return;
    e.preventDefault();
  });

  async function start() {
    $("setup").hidden = true;
    if (!(await openSession())) { $("setup").hidden = false; return; }
    document.body.dataset.state = "scanning";
    await refill();
    showProgress();
  }

  $("stamp").addEventListener("load", () => {
    $("stamp").previousElementSibling.style.width = $("stamp").width + "px";
  });

  $("setup").addEventListener("submit", (e) => {
    e.preventDefault();
    scanner = $("scanner").value.trim();
    order = $("order").value;
    localStorage.setItem("s2v-scanner", scanner);
    localStorage.setItem("s2v-order", order);
    start();
  });

  scanner = params.get("scanner") || localStorage.getItem("s2v-scanner");
  order = params.get("order") || localStorage.getItem("s2v-order") || $("order").value;
  if (params.get("scanner")) localStorage.setItem("s2v-scanner", scanner);
  if (scanner) {
    $("scanner").value = scanner;
    if ([...$("order").options].some((o) => o.value === order)) $("order").value = order;
    else order = $("order").value;
    start();
  }
})();
