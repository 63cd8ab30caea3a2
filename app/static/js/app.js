// Tunesmith's small client script: busy bar, fading flashes, and the player bar that keeps
// playing across hx-boost navigations (the #player element is hx-preserve'd).
(function () {
  "use strict";
  var busy = 0;
  function setBusy(d) { busy = Math.max(0, busy + d); document.body.classList.toggle("is-busy", busy > 0); }
  document.addEventListener("htmx:beforeRequest", function (e) { if (!e.detail.requestConfig || !e.detail.requestConfig.triggeringEvent || e.detail.requestConfig.triggeringEvent.type !== "load") setBusy(1); else e.detail.elt.dataset.quiet = "1"; });
  document.addEventListener("htmx:afterRequest", function (e) { if (!e.detail.elt.dataset.quiet) setBusy(-1); else delete e.detail.elt.dataset.quiet; });

  function fadeFlashes(root) {
    (root || document).querySelectorAll(".flash:not([data-fading])").forEach(function (el) {
      el.dataset.fading = "1";
      setTimeout(function () { el.classList.add("fade"); setTimeout(function () { el.remove(); }, 500); }, 5000);
    });
  }
  document.addEventListener("DOMContentLoaded", function () { fadeFlashes(); });
  document.addEventListener("htmx:afterSettle", function () { fadeFlashes(); });

  function fmt(t) { if (!isFinite(t)) return "0:00"; t = Math.floor(t); return Math.floor(t / 60) + ":" + String(t % 60).padStart(2, "0"); }

  var Player = {
    el: function () { return document.getElementById("player"); },
    audio: function () { var p = this.el(); return p && p.querySelector("audio"); },
    play: function (d) {
      var p = this.el(), a = this.audio(); if (!p || !a) return;
      p.hidden = false;
      if (p.dataset.songId !== d.songId) {
        p.dataset.songId = d.songId;
        a.src = d.src;
        p.querySelector(".player-title").textContent = d.title || "Untitled";
        p.querySelector(".player-artist").textContent = d.artist || "";
        var img = p.querySelector(".player-art"); img.src = d.cover || ""; img.alt = d.title ? "Cover of " + d.title : "";
        var dl = p.querySelector(".player-download"); if (d.download) { dl.href = d.download; dl.hidden = false; } else { dl.hidden = true; }
      }
      a.play();
    },
    toggle: function () { var a = this.audio(); if (!a || !a.src) return; if (a.paused) a.play(); else a.pause(); }
  };
  window.TunesmithPlayer = Player;

  document.addEventListener("click", function (e) {
    if (e.target.matches && e.target.matches("[data-select-on-click]")) { e.target.select(); return; }
    var btn = e.target.closest("[data-play]");
    if (btn) {
      e.preventDefault();
      if (window.TunesmithQueue) window.TunesmithQueue.playFrom(btn);  // the button's whole list (queue.js)
      else Player.play({ songId: btn.dataset.songId, src: btn.dataset.play, title: btn.dataset.title, artist: btn.dataset.artist, cover: btn.dataset.cover, download: btn.dataset.download });
      return;
    }
    if (e.target.closest(".player-toggle")) { (window.TunesmithQueue || Player).toggle(); return; }
    var wave = e.target.closest("[data-seek-wave]");
    if (wave) {
      var r = wave.getBoundingClientRect(), frac = (e.clientX - r.left) / r.width;
      var a = Player.audio(), p = Player.el();
      if (p && p.dataset.songId === wave.dataset.songId && a && isFinite(a.duration)) a.currentTime = frac * a.duration;
      else { var b = document.querySelector("[data-play][data-song-id='" + wave.dataset.songId + "']"); if (b) { b.click(); var once = function () { a.currentTime = frac * a.duration; a.removeEventListener("loadedmetadata", once); }; a.addEventListener("loadedmetadata", once); } }
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var p = Player.el(), a = Player.audio(); if (!p || !a) return;
    var seek = p.querySelector(".player-seek"), vol = p.querySelector(".player-volume"), toggle = p.querySelector(".player-toggle");
    a.volume = (vol.value || 80) / 100;
    a.addEventListener("play", function () { toggle.textContent = "❚❚"; toggle.setAttribute("aria-label", "Pause"); p.dataset.state = "playing"; });
    a.addEventListener("pause", function () { toggle.textContent = "▶"; toggle.setAttribute("aria-label", "Play"); p.dataset.state = "paused"; });
    a.addEventListener("timeupdate", function () {
      p.querySelector(".player-time").textContent = fmt(a.currentTime);
      p.querySelector(".player-duration").textContent = fmt(a.duration);
      if (isFinite(a.duration) && a.duration > 0) seek.value = Math.round(1000 * a.currentTime / a.duration);
    });
    seek.addEventListener("input", function () { if (isFinite(a.duration)) a.currentTime = a.duration * seek.value / 1000; });
    vol.addEventListener("input", function () { a.volume = vol.value / 100; });
  });
})();

// Create page: inspiration chips append phrases to the description; style badges add tags
// to the styles box, joined with ", " and skipping duplicates.
document.addEventListener("click", function (e) {
  var chip = e.target.closest("[data-append]");
  if (chip) {
    var area = document.getElementById(chip.dataset.append);
    if (area) { var v = area.value.trim(); area.value = v ? v.replace(/[.\s]*$/, "") + ". " + chip.dataset.text : chip.dataset.text; area.focus(); }
    return;
  }
  var tag = e.target.closest("[data-append-tag]");
  if (tag) {
    var input = document.getElementById(tag.dataset.appendTag);
    if (!input) return;
    var parts = input.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    var exists = parts.some(function (p) { return p.toLowerCase() === tag.dataset.text.toLowerCase(); });
    if (!exists) parts.push(tag.dataset.text);
    input.value = parts.join(", ");
    input.focus();
  }
});

// ===== feed & song page =====
// Owner-action and like forms marked [data-swap-errors] show their 409/422/503 answers (the
// message sits in the returned fragment) instead of htmx's default of not swapping errors.
document.addEventListener("htmx:beforeSwap", function (e) {
  var x = e.detail.xhr, elt = (e.detail.requestConfig && e.detail.requestConfig.elt) || e.target;
  if (x && (x.status === 402 || x.status === 409 || x.status === 413 || x.status === 415 || x.status === 422 || x.status === 503) && elt && elt.closest && elt.closest("[data-swap-errors]")) {
    e.detail.shouldSwap = true;
    e.detail.isError = false;
  }
});
// The waveform of the song that is playing fills in as it plays (--played, 0..1).
document.addEventListener("DOMContentLoaded", function () {
  var p = document.getElementById("player"), a = p && p.querySelector("audio");
  if (!a) return;
  a.addEventListener("timeupdate", function () {
    if (!isFinite(a.duration) || a.duration <= 0) return;
    var frac = (a.currentTime / a.duration).toFixed(4);
    document.querySelectorAll("[data-seek-wave]").forEach(function (w) {
      w.style.setProperty("--played", w.dataset.songId === p.dataset.songId ? frac : 0);
    });
  });
});
// ===== end feed & song page =====

// ===== look & feel =====
// A boosted link or form (hx-boost) that answers 4xx/5xx with a page is a page a person must
// see: the login form saying the password is wrong, the register form's field errors, a 404
// page. htmx does not swap error answers by default, so without this the click did nothing.
document.addEventListener("htmx:beforeSwap", function (e) {
  var x = e.detail.xhr;
  if (e.detail.boosted && x && x.status >= 400 && /text\/html/.test(x.getResponseHeader("Content-Type") || "")) {
    e.detail.shouldSwap = true;
    e.detail.isError = false;
  }
});
// ===== end look & feel =====

// Studio: while the Repaint tool is open, clicks on the waveform pick the section instead of
// seeking: the first click sets Start, the second End (swapped if needed), then it starts over.
document.addEventListener("click", function (e) {
  var wave = e.target.closest("[data-seek-wave]");
  var open = document.querySelector("details.studio-tool[open] [data-wave-start]");
  if (!wave || !open) return;
  e.stopImmediatePropagation(); e.preventDefault();
  var form = open.form, start = form.querySelector("[data-wave-start]"), end = form.querySelector("[data-wave-end]");
  var dur = parseFloat(start.max) || 0, r = wave.getBoundingClientRect();
  var t = Math.round(10 * dur * Math.min(1, Math.max(0, (e.clientX - r.left) / r.width))) / 10;
  if (wave.dataset.picking !== "end") { start.value = t; end.value = ""; wave.dataset.picking = "end"; }
  else {
    var a = parseFloat(start.value) || 0;
    if (t < a) { end.value = a; start.value = t; } else { end.value = t; }
    wave.dataset.picking = "start";
  }
  wave.style.setProperty("--sel-start", (parseFloat(start.value) || 0) / (dur || 1));
  wave.style.setProperty("--sel-end", (parseFloat(end.value) || parseFloat(start.value) || 0) / (dur || 1));
  wave.classList.add("has-selection");
}, true);
