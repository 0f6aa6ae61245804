/* Catalog filters: show the cards whose facets hold every chosen value; keep the URL in step. */
"use strict";
(() => {
  const form = document.getElementById("filters");
  const cards = Array.from(document.querySelectorAll(".model-card"));
  const count = document.getElementById("model-count");
  const empty = document.getElementById("no-models");
  function apply() {
    const chosen = {};
    form.querySelectorAll("select[data-filter]").forEach(s => { if (s.value) chosen[s.dataset.filter] = s.value; });
    let visible = 0;
    for (const card of cards) {
      const ok = Object.entries(chosen).every(([key, value]) => (card.dataset[key] || "").split(" ").includes(value));
      card.hidden = !ok;
      if (ok) visible += 1;
    }
    count.textContent = `${visible} of ${cards.length} models`;
    empty.hidden = visible > 0;
    const query = new URLSearchParams(chosen).toString();
    history.replaceState(null, "", window.location.pathname + (query ? "?" + query : ""));
  }
  form.addEventListener("change", apply);
  form.addEventListener("submit", ev => { ev.preventDefault(); apply(); });
  apply();
})();
