// Tunesmith's play queue. A Play button plays its whole list: the nearest element marked
// [data-queue], else the nearest element around the button that holds more than one song's Play
// button (the library, a Discover section, a playlist, a profile). Next / previous, shuffle,
// repeat (off, all, one), keyboard shortcuts (space, ← →, n / p) and the Media Session API
// (lock-screen and headset controls). The queue, the song and the position are kept in
// localStorage, so they survive a reload; hx-boost navigation keeps the player element itself.
// A restored song is loaded only when the person presses play: a reload counts no listen.
(function () {
  "use strict";
  var KEY = "tunesmith.queue.v1";
  var REPEATS = ["off", "all", "one"];
  var state = { items: [], list: [], index: -1, shuffle: false, repeat: "off", time: 0 };
  var pendingTime = null;  // where a restored song resumes once it is loaded

  function player() { return document.getElementById("player"); }
  function audio() { var p = player(); return p && p.querySelector("audio"); }

  function itemOf(btn) {
    var d = btn.dataset;
    return { songId: d.songId, src: d.play, title: d.title || "", artist: d.artist || "", cover: d.cover || "",
             download: d.download || "" };
  }

  function listOf(btn) {
    var scope = btn.closest("[data-queue]");
    if (!scope) {
      for (var el = btn.parentElement; el && el !== document.body; el = el.parentElement) {
        var ids = {};
        el.querySelectorAll("[data-play]").forEach(function (b) { ids[b.dataset.songId] = 1; });
        if (Object.keys(ids).length > 1) { scope = el; break; }
      }
    }
    var buttons = scope ? scope.querySelectorAll("[data-play]") : [btn];
    var seen = {}, items = [];
    Array.prototype.forEach.call(buttons, function (b) {
      if (!b.dataset.songId || seen[b.dataset.songId]) return;
      seen[b.dataset.songId] = 1;
      items.push(itemOf(b));
    });
    return items;
  }

  function shuffled(items, first) {
    var rest = items.filter(function (it) { return it.songId !== first.songId; });
    for (var i = rest.length - 1; i > 0; i--) {
      var j = Math.floor(Math.random() * (i + 1)), t = rest[i]; rest[i] = rest[j]; rest[j] = t;
    }
    return [first].concat(rest);
  }

  function save() {
    var a = audio();
    if (a && a.src && isFinite(a.currentTime)) state.time = a.currentTime;
    try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { /* private mode: no memory */ }
  }

  function current() { return state.items[state.index] || null; }

  function render() {
    var p = player(); if (!p) return;
    p.dataset.queueIndex = String(state.index);
    p.dataset.queueLength = String(state.items.length);
    p.dataset.shuffle = state.shuffle ? "on" : "off";
    p.dataset.repeat = state.repeat;
    var prev = p.querySelector(".player-prev"), next = p.querySelector(".player-next");
    var sh = p.querySelector(".player-shuffle"), rep = p.querySelector(".player-repeat");
    if (prev) prev.disabled = state.items.length < 2 && state.index <= 0;
    if (next) next.disabled = state.items.length < 2;
    if (sh) { sh.setAttribute("aria-pressed", state.shuffle ? "true" : "false"); }
    if (rep) {
      rep.setAttribute("aria-pressed", state.repeat === "off" ? "false" : "true");
      rep.setAttribute("aria-label", "Repeat: " + state.repeat);
      rep.title = "Repeat: " + state.repeat;
    }
    var it = current();
    if (it && "mediaSession" in navigator && window.MediaMetadata) {
      navigator.mediaSession.metadata = new MediaMetadata({
        title: it.title || "Untitled", artist: it.artist || "Tunesmith",
        artwork: it.cover ? [{ src: it.cover, sizes: "512x512" }] : [] });
    }
  }

  function show(it) {
    // The player shows a song without loading it (a restored queue after a reload).
    var p = player(); if (!p) return;
    p.hidden = false;
    p.dataset.songId = it.songId;
    p.querySelector(".player-title").textContent = it.title || "Untitled";
    p.querySelector(".player-artist").textContent = it.artist || "";
    var img = p.querySelector(".player-art"); img.src = it.cover || ""; img.alt = it.title ? "Cover of " + it.title : "";
    var dl = p.querySelector(".player-download"); if (it.download) { dl.href = it.download; dl.hidden = false; } else { dl.hidden = true; }
  }

  function playIndex(i) {
    if (i < 0 || i >= state.items.length) return;
    state.index = i;
    pendingTime = null;
    var it = current(), a = audio(), p = player();
    if (p && a && p.dataset.songId === it.songId && a.src) { a.currentTime = 0; a.play(); }
    else window.TunesmithPlayer.play(it);
    render(); save();
  }

  var Queue = {
    state: state,
    playFrom: function (btn) {
      var items = listOf(btn), first = itemOf(btn);
      var idx = items.findIndex(function (it) { return it.songId === first.songId; });
      if (idx < 0) { items = [first]; idx = 0; }
      state.list = items;
      state.items = state.shuffle ? shuffled(items, items[idx]) : items.slice();
      state.index = state.shuffle ? 0 : idx;
      var p = player(), a = audio();
      pendingTime = null;
      if (p && a && p.dataset.songId === first.songId && a.src) { a.play(); render(); save(); return; }
      window.TunesmithPlayer.play(current());
      render(); save();
    },
    next: function (auto) {
      if (!state.items.length) return;
      if (auto && state.repeat === "one") { playIndex(state.index); return; }
      if (state.index + 1 < state.items.length) playIndex(state.index + 1);
      else if (state.repeat === "all" || !auto) playIndex(0);
      else { state.time = 0; save(); }
    },
    prev: function () {
      var a = audio();
      if (a && a.currentTime > 3) { a.currentTime = 0; return; }
      if (state.index > 0) playIndex(state.index - 1);
      else if (state.repeat === "all" && state.items.length) playIndex(state.items.length - 1);
      else if (a) a.currentTime = 0;
    },
    toggleShuffle: function () {
      var it = current();
      state.shuffle = !state.shuffle;
      if (it) {
        state.items = state.shuffle ? shuffled(state.list, it) : state.list.slice();
        state.index = state.items.findIndex(function (x) { return x.songId === it.songId; });
      }
      render(); save();
    },
    cycleRepeat: function () {
      state.repeat = REPEATS[(REPEATS.indexOf(state.repeat) + 1) % REPEATS.length];
      render(); save();
    },
    toggle: function () {
      var a = audio(), it = current(), p = player();
      if (!a) return;
      if (!a.src && it && p && p.dataset.songId === it.songId) {  // a restored song: load it now
        var at = pendingTime;
        delete p.dataset.songId;  // so the player loads the song it shows
        window.TunesmithPlayer.play(it);
        if (at) {
          var seek = function () { a.currentTime = at; a.removeEventListener("loadedmetadata", seek); };
          a.addEventListener("loadedmetadata", seek);
        }
        pendingTime = null;
        return;
      }
      window.TunesmithPlayer.toggle();
    },
    seekBy: function (s) { var a = audio(); if (a && a.src && isFinite(a.duration)) a.currentTime = Math.max(0, Math.min(a.duration, a.currentTime + s)); }
  };
  window.TunesmithQueue = Queue;

  function restore() {
    var saved;
    try { saved = JSON.parse(localStorage.getItem(KEY) || "null"); } catch (e) { saved = null; }
    if (!saved || !Array.isArray(saved.items) || !saved.items.length) return;
    state.items = saved.items; state.list = Array.isArray(saved.list) && saved.list.length ? saved.list : saved.items.slice();
    state.index = Math.max(0, Math.min(saved.items.length - 1, saved.index | 0));
    state.shuffle = !!saved.shuffle; state.repeat = REPEATS.indexOf(saved.repeat) >= 0 ? saved.repeat : "off";
    state.time = +saved.time || 0;
    pendingTime = state.time;
    show(current());
    render();
  }

  document.addEventListener("click", function (e) {
    var p = player(); if (!p || !p.contains(e.target)) return;
    if (e.target.closest(".player-next")) { Queue.next(false); e.preventDefault(); }
    else if (e.target.closest(".player-prev")) { Queue.prev(); e.preventDefault(); }
    else if (e.target.closest(".player-shuffle")) { Queue.toggleShuffle(); e.preventDefault(); }
    else if (e.target.closest(".player-repeat")) { Queue.cycleRepeat(); e.preventDefault(); }
  });

  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target, tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
    var p = player(); if (!p || p.hidden) return;
    if (e.key === " " || e.code === "Space") {
      if (tag === "BUTTON" || tag === "A" || tag === "SUMMARY") return;  // space presses the focused control
      Queue.toggle(); e.preventDefault();
    } else if (e.key === "ArrowRight") { Queue.seekBy(5); e.preventDefault(); }
    else if (e.key === "ArrowLeft") { Queue.seekBy(-5); e.preventDefault(); }
    else if (e.key === "n" || e.key === "N") { Queue.next(false); e.preventDefault(); }
    else if (e.key === "p" || e.key === "P") { Queue.prev(); e.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var a = audio(); if (!a) return;
    var last = 0;
    a.addEventListener("ended", function () { Queue.next(true); });
    a.addEventListener("timeupdate", function () { var now = Date.now(); if (now - last > 2000) { last = now; save(); } });
    a.addEventListener("pause", save);
    window.addEventListener("pagehide", save);
    if ("mediaSession" in navigator) {
      var ms = navigator.mediaSession;
      var on = function (action, fn) { try { ms.setActionHandler(action, fn); } catch (err) { /* not supported */ } };
      on("play", function () { Queue.toggle(); });
      on("pause", function () { var x = audio(); if (x) x.pause(); });
      on("previoustrack", function () { Queue.prev(); });
      on("nexttrack", function () { Queue.next(false); });
      on("seekbackward", function () { Queue.seekBy(-10); });
      on("seekforward", function () { Queue.seekBy(10); });
      on("seekto", function (d) { var x = audio(); if (x && d && isFinite(d.seekTime)) x.currentTime = d.seekTime; });
      a.addEventListener("play", function () { ms.playbackState = "playing"; });
      a.addEventListener("pause", function () { ms.playbackState = "paused"; });
    }
    var p = player();
    if (p && !p.dataset.songId) restore();
  });
})();
