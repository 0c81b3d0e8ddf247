// probe's status page: poll /api/targets with the page's own query string and rebuild the
// table from it. Data goes into the page only through textContent and setAttribute, never
// as markup, so a target named "<img src=x onerror=alert(1)>" stays text.
"use strict";
(function () {
  const EVERY_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 240, H = 36;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function chart(c) {
    const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H,
                              role: "img"});
    const title = svgEl("title", {});
    title.textContent = `p50 and max per minute, 0 to ${c.scale_ms} ms; red: failures`;
    svg.append(title, svgEl("path", {class: "fail", d: c.fail}),
               svgEl("path", {class: "smoke", d: c.smoke}),
               svgEl("path", {class: "p50", d: c.p50}));
    return svg;
  }

  function row(r) {
    const tr = el("tr", "target state-" + r.state);
    const name = el("td", "name", r.cells[0]);
    const labels = Object.entries(r.labels).map(([k, v]) => k + "=" + v).join(" ");
    if (labels) name.append(el("div", "labels", labels));
    tr.append(name, el("td", "", r.cells[1]), el("td", "state", r.cells[2]));
    for (const i of [3, 4, 5]) tr.append(el("td", "", r.cells[i]));
    for (const i of [6, 7, 8]) tr.append(el("td", "num", r.cells[i]));
    const graph = el("td");
    graph.append(chart(r.chart));
    const list = el("ul", "changes");
    for (const c of r.changes) list.append(el("li", "", c.text));
    const changes = el("td");
    changes.append(list);
    tr.append(graph, changes);
    return tr;
  }

  function summary(p) {
    const c = p.counts;
    let text = p.matched === p.total ? `${p.matched} targets` : `${p.matched} of ${p.total} targets`;
    text += `: ${c.up} up, ${c.down} down, ${c.unknown} unknown`;
    if (p.pages > 1) text += ` · page ${p.page} of ${p.pages}`;
    return text + " · " + p.generated;
  }

  function show(p) {
    const table = document.getElementById("targets");
    const columns = table.tHead.rows[0].cells.length;
    for (const body of Array.from(table.tBodies)) body.remove();
    for (const g of p.groups) {
      const body = el("tbody");
      if (g.name) {
        const tr = el("tr", "group");
        const th = el("th", "", g.name);
        th.colSpan = columns;
        tr.append(th);
        body.append(tr);
      }
      for (const r of g.rows) body.append(row(r));
      table.append(body);
    }
    document.getElementById("summary").textContent = summary(p);
    document.body.dataset.updated = p.generated;
  }

  async function poll() {
    try {
      const answer = await fetch("/api/targets" + window.location.search,
                                 {cache: "no-store", credentials: "same-origin"});
      if (answer.ok) {
        show(await answer.json());
        document.body.classList.remove("stale");
      } else {
        document.body.classList.add("stale");
      }
    } catch (e) {
      document.body.classList.add("stale");  // the daemon is gone or restarting
    }
    window.setTimeout(poll, EVERY_MS);
  }

  window.setTimeout(poll, EVERY_MS);
})();
