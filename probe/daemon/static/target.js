// A target's page: the charts take the keyboard. Tab to a chart; Left/Right (or j/k) step
// through its columns, Home/End jump to the first and last; the readout under the chart
// (aria-live) says what the column holds. Text only through textContent.
"use strict";
(function () {
  function select(svg, cols, i) {
    const k = Math.max(0, Math.min(cols.length - 1, i));
    for (const c of cols) c.classList.remove("current");
    if (!cols.length) return;
    cols[k].classList.add("current");
    svg.dataset.at = String(k);
    const out = document.getElementById(svg.getAttribute("aria-describedby"));
    if (out) out.textContent = cols[k].dataset.text;
  }

  for (const svg of document.querySelectorAll("svg.history")) {
    const cols = Array.from(svg.querySelectorAll("g.col"));
    svg.addEventListener("keydown", (event) => {
      const at = svg.dataset.at === undefined ? cols.length : Number(svg.dataset.at);
      const step = {ArrowLeft: -1, ArrowRight: 1, k: -1, j: 1}[event.key];
      if (step !== undefined) select(svg, cols, at + step);
      else if (event.key === "Home") select(svg, cols, 0);
      else if (event.key === "End") select(svg, cols, cols.length - 1);
      else return;
      event.preventDefault();
    });
    svg.addEventListener("focus", () => {
      if (svg.dataset.at === undefined) select(svg, cols, cols.length - 1);
    });
    svg.addEventListener("mousemove", (event) => {
      const g = event.target.closest && event.target.closest("g.col");
      if (g) select(svg, cols, cols.indexOf(g));
    });
  }
})();
