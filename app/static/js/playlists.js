// Playlists: play the list from an entry, drag entries to reorder them, and
// show the messages of refused playlist forms. Event delegation, so playlist pages swapped in by
// htmx (hx-boost) need no set-up. Without JavaScript the ↑ ↓ buttons reorder and the song links
// open each song's page.
(function () {
  "use strict";

  function entriesOf(list) { return Array.prototype.slice.call(list.querySelectorAll("li[data-song-id]")); }

  // ---- playing: the whole playlist goes to the play queue (queue.js), starting at the entry.
  // The queue reads Play buttons ([data-play] with data-song-id) inside a [data-queue] scope;
  // the page keeps one data-song-id per entry, so the queue gets detached copies of the buttons.
  function play(btn) {
    var list = btn.closest("ol[data-playlist-id]") || btn.parentNode;
    var scope = document.createElement("div"), chosen = null;
    scope.setAttribute("data-queue", "");
    list.querySelectorAll("[data-playlist-play]").forEach(function (b) {
      var c = document.createElement("button");
      c.dataset.play = b.dataset.playlistPlay; c.dataset.songId = b.dataset.track;
      c.dataset.title = b.dataset.title || ""; c.dataset.artist = b.dataset.artist || ""; c.dataset.cover = b.dataset.cover || "";
      scope.appendChild(c);
      if (b === btn) chosen = c;
    });
    if (!chosen) return;
    if (window.TunesmithQueue) window.TunesmithQueue.playFrom(chosen);
    else if (window.TunesmithPlayer) window.TunesmithPlayer.play({ songId: chosen.dataset.songId, src: chosen.dataset.play,
      title: chosen.dataset.title, artist: chosen.dataset.artist, cover: chosen.dataset.cover });
  }
  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("[data-playlist-play]");
    if (btn) { e.preventDefault(); play(btn); }
  });

  // ---- reordering by drag and drop (the owner's list carries data-reorder-url)
  var dragged = null, before = null;
  function csrfToken(list) {
    var field = list.closest("#playlist-main") && list.closest("#playlist-main").querySelector("input[name=csrf_token]");
    var meta = document.querySelector("meta[name=csrf-token]");
    return (field && field.value) || (meta && meta.content) || "";
  }
  function replaceMain(html) {
    var main = document.getElementById("playlist-main");
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    var fresh = tpl.content.querySelector("#playlist-main");
    if (!main || !fresh) { window.location.reload(); return; }
    main.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
  }
  function save(list) {
    var ids = entriesOf(list).map(function (li) { return li.dataset.songId; });
    if (ids.join(",") === before) return;
    fetch(list.dataset.reorderUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded", "X-CSRFToken": csrfToken(list), "HX-Request": "true" },
      body: "song_ids=" + encodeURIComponent(ids.join(","))
    }).then(function (r) { return r.text(); }).then(replaceMain, function () { window.location.reload(); });
  }
  document.addEventListener("dragstart", function (e) {
    var li = e.target.closest && e.target.closest("ol[data-reorder-url] > li[data-song-id]");
    if (!li) return;
    dragged = li;
    before = entriesOf(li.parentNode).map(function (x) { return x.dataset.songId; }).join(",");
    li.style.opacity = "0.5";
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", li.dataset.songId);
  });
  document.addEventListener("dragover", function (e) {
    if (!dragged) return;
    var over = e.target.closest && e.target.closest("li[data-song-id]");
    if (!over || over === dragged || over.parentNode !== dragged.parentNode) return;
    e.preventDefault();
    var r = over.getBoundingClientRect();
    over.parentNode.insertBefore(dragged, e.clientY > r.top + r.height / 2 ? over.nextSibling : over);
  });
  document.addEventListener("drop", function (e) { if (dragged) e.preventDefault(); });
  document.addEventListener("dragend", function () {
    if (!dragged) return;
    var list = dragged.parentNode;
    dragged.style.opacity = "";
    dragged = null;
    save(list);
  });

  // ---- refused playlist forms: their 400/404 answers carry the message in the fragment
  // (app.js already swaps 409/422 for [data-swap-errors]); a whole error page is not swapped in.
  document.addEventListener("htmx:beforeSwap", function (e) {
    var x = e.detail.xhr, elt = (e.detail.requestConfig && e.detail.requestConfig.elt) || e.target;
    if (!x || (x.status !== 400 && x.status !== 404) || !elt || !elt.closest || !elt.closest("[data-playlist-forms]")) return;
    if (/id="playlist-main"|data-add-form/.test(x.responseText || "")) { e.detail.shouldSwap = true; e.detail.isError = false; }
  });
})();
