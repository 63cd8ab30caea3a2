// Password strength while typing: <p data-strength-for="FIELD_ID"> under a password field shows a
// rough estimate (the server's rules decide: length, the common-passwords list). Event
// delegation, so pages swapped in by htmx need no set-up.
(function () {
  "use strict";
  var LABELS = ["very weak", "weak", "fair", "good", "strong"];
  function strength(pw) {
    if (!pw) return -1;
    var pool = 0;
    if (/[a-z]/.test(pw)) pool += 26;
    if (/[A-Z]/.test(pw)) pool += 26;
    if (/[0-9]/.test(pw)) pool += 10;
    if (/[^A-Za-z0-9]/.test(pw)) pool += 33;
    var unique = new Set(pw.split("")).size;
    var bits = (unique + (pw.length - unique) * 0.5) * Math.log2(Math.max(pool, 2));
    return bits < 28 ? 0 : bits < 36 ? 1 : bits < 50 ? 2 : bits < 64 ? 3 : 4;
  }
  document.addEventListener("input", function (ev) {
    var field = ev.target;
    if (!field || field.type !== "password" || !field.id) return;
    var out = document.querySelector('[data-strength-for="' + field.id + '"]');
    if (!out) return;
    var s = strength(field.value);
    out.dataset.strength = String(s);
    out.textContent = s < 0 ? "" : (field.value.length < 8 ? "Too short: " + field.value.length + " of at least 8 characters"
                                              : "Strength: " + LABELS[s]);
  });
})();
