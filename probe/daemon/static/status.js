// probe's status page: poll /api/targets with the page's own query string and bring the
// table up to date IN PLACE: a row is found by its target's name, and only the cells whose
// text changed are touched. A cell holding the user's text selection is left alone until
// the selection goes, so an endpoint being copied stays put; rows are never rebuilt, so
// focus and scroll position survive. Data goes into the page only through textContent and
// setAttribute, never as markup: a target named "<img src=x onerror=alert(1)>" stays text.
"use strict";
(function () {
  const EVERY_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 240, H = 36, SHOWN_W = 180;
  const DAY_STEP = 2, DAY_H = 14;
  const DAY_CLASSES = ["none", "bad", "warn", "ok"];
  // Text cells by class, and the index of their text in the row's `cells`.
  const TEXT = [["address", 1], ["state", 2], ["since", 3], ["outcome", 4], ["local", 5],
                ["latency", 6], ["rtt", 7], ["uptime", 8]];
  let states = null;  // name → state at the last poll, for the announcements

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

  // The user is selecting inside this node: leave it as it is.
  function held(node) {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return false;
    for (let i = 0; i < sel.rangeCount; i++) {
      if (sel.getRangeAt(i).intersectsNode(node)) return true;
    }
    return false;
  }

  function setText(node, text) {
    if (node.textContent !== text && !held(node)) node.textContent = text;
  }

  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== String(value)) node.setAttribute(name, value);
  }

  function chart() {
    const svg = svgEl("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, width: SHOWN_W,
                              height: H, preserveAspectRatio: "none", role: "img"});
    svg.append(svgEl("title", {}), svgEl("path", {class: "fail"}),
               svgEl("path", {class: "smoke"}), svgEl("path", {class: "p50"}));
    return svg;
  }

  function updateChart(svg, c) {
    const paths = svg.querySelectorAll("path");
    setAttr(paths[0], "d", c.fail);
    setAttr(paths[1], "d", c.smoke);
    setAttr(paths[2], "d", c.p50);
    setText(svg.querySelector("title"),
            `p50 and max per minute, 0 to ${c.scale_ms} ms; red: failures`);
  }

  function dayClass(pct) {
    if (pct === null) return 0;
    return pct >= 99.9 ? 3 : (pct >= 99 ? 2 : 1);
  }

  function updateDays(cell, days) {
    const sig = days.map(d => (d === null ? "-" : String(d))).join(",");
    if (cell.dataset.sig === sig) return;
    cell.dataset.sig = sig;
    const width = 90 * DAY_STEP;
    const svg = svgEl("svg", {class: "days", viewBox: `0 0 ${width} ${DAY_H}`, width: width,
                              height: DAY_H, role: "img"});
    const paths = [[], [], [], []];
    let start = 0, kind = -1;  // runs of days of one kind: one dashed stroke each
    [...days, undefined].forEach((pct, i) => {
      const k = pct === undefined ? -1 : dayClass(pct);
      if (k === kind) return;
      if (kind >= 0) paths[kind].push(`M${start * DAY_STEP} ${DAY_H / 2}h${(i - start) * DAY_STEP}`);
      start = i;
      kind = k;
    });
    const known = days.filter(d => d !== null);
    const title = svgEl("title", {});
    title.textContent = `uptime by day, ${known.length} days with attempts` +
      (known.length ? `; worst day ${Math.min(...known).toFixed(2)} %` : "");
    svg.append(title);
    paths.forEach((d, k) => {
      if (d.length) svg.append(svgEl("path", {class: "day-" + DAY_CLASSES[k], d: d.join("")}));
    });
    cell.replaceChildren(svg);
  }

  function newRow(r, extraColumns) {
    const tr = el("tr", "target");
    tr.dataset.name = r.name;
    const name = el("td", "name");
    const link = el("a", "", r.name);
    link.href = "/target/" + encodeURIComponent(r.name);
    name.append(link);
    const labels = Object.entries(r.labels).map(([k, v]) => k + "=" + v).join(" ");
    if (labels) name.append(el("div", "labels", labels));
    const more = el("button", "more", "details");
    more.type = "button";
    more.setAttribute("aria-expanded", "false");
    name.append(more);
    tr.append(name);
    for (const [cls] of TEXT) {
      if (cls === "uptime") {
        for (const col of extraColumns) {
          const td = el("td", "extra");
          td.dataset.col = col;
          tr.append(td);
        }
      }
      tr.append(el("td", ["latency", "rtt", "uptime"].includes(cls) ? "num " + cls : cls));
    }
    const graph = el("td", "chart");
    graph.append(chart());
    const days = el("td", "days");
    const changes = el("td", "changes");
    changes.append(el("ul", "changes"));
    tr.append(graph, days, changes);
    return tr;
  }

  function updateRow(tr, r) {
    setAttr(tr, "class", "target state-" + r.state + (tr.classList.contains("open") ? " open" : ""));
    for (const [cls, i] of TEXT) setText(tr.querySelector("td." + cls), r.cells[i]);
    for (const td of tr.querySelectorAll("td.extra")) setText(td, r.extra[td.dataset.col] || "");
    updateChart(tr.querySelector("td.chart svg"), r.chart);
    updateDays(tr.querySelector("td.days"), r.days);
    const list = tr.querySelector("ul.changes");
    const sig = r.changes.map(c => c.text).join("\n");
    if (list.dataset.sig !== sig && !held(list)) {
      list.dataset.sig = sig;
      list.replaceChildren(...r.changes.map(c => el("li", "", c.text)));
    }
  }

  // Rows of one tbody in the order given, moving as few as possible.
  function reconcile(body, rows, columns, extraColumns) {
    const byName = new Map();
    for (const tr of body.querySelectorAll("tr.target")) byName.set(tr.dataset.name, tr);
    const wanted = new Set(rows.map(r => r.name));
    for (const [name, tr] of byName) if (!wanted.has(name)) tr.remove();
    const head = body.querySelector("tr.group");
    let at = head ? head.nextSibling : body.firstChild;
    for (const r of rows) {
      let tr = byName.get(r.name);
      if (!tr) tr = newRow(r, extraColumns);
      updateRow(tr, r);
      if (tr !== at) body.insertBefore(tr, at);
      else at = at.nextSibling;
    }
  }

  function summary(p) {
    const c = p.counts;
    let text = p.matched === p.total ? `${p.matched} targets` : `${p.matched} of ${p.total} targets`;
    text += `: ${c.up} up, ${c.down} down, ${c.unknown} unknown`;
    if (p.pages > 1) text += ` · page ${p.page} of ${p.pages}`;
    return text + " · " + p.generated;
  }

  function scaleText(ms) {
    return ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`;
  }

  function announce(p) {
    const now = new Map();
    const said = [];
    for (const g of p.groups) {
      for (const r of g.rows) {
        now.set(r.name, r.state);
        const before = states && states.get(r.name);
        if (before !== undefined && before !== r.state) {
          said.push(`${r.name} is ${r.state}` + (r.state === "down" && r.error ? ` (${r.error})` : ""));
        }
      }
    }
    states = now;
    if (said.length) document.getElementById("announce").textContent = said.join(". ") + ".";
  }

  function show(p) {
    const table = document.getElementById("targets");
    const columns = table.tHead.rows[0].cells.length;
    const bodies = Array.from(table.tBodies);
    const same = bodies.length === p.groups.length &&
      bodies.every((b, i) => (b.dataset.group || "") === p.groups[i].name);
    if (!same) {  // another grouping: a new table body per group (the query changed)
      for (const body of bodies) body.remove();
      for (const g of p.groups) {
        const body = el("tbody");
        body.dataset.group = g.name;
        if (g.name) {
          const tr = el("tr", "group");
          const th = el("th", "", g.name);
          th.colSpan = columns;
          tr.append(th);
          body.append(tr);
        }
        table.append(body);
      }
    }
    const now = Array.from(table.tBodies);
    p.groups.forEach((g, i) => reconcile(now[i], g.rows, columns, p.extra_columns));
    setText(document.getElementById("summary"), summary(p));
    setText(document.getElementById("scale"), "0 to " + scaleText(p.scale_ms));
    setText(document.getElementById("days-from"), "from " + p.days_from);
    announce(p);
    document.body.dataset.updated = p.generated;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  }

  // Narrow screens: a tap on a row (not on its link) shows or hides its details.
  document.addEventListener("click", (event) => {
    const tr = event.target.closest && event.target.closest("tr.target");
    if (!tr || event.target.closest("a")) return;
    if (window.getSelection && !window.getSelection().isCollapsed) return;  // selecting
    const open = tr.classList.toggle("open");
    const button = tr.querySelector("button.more");
    if (button) button.setAttribute("aria-expanded", String(open));
  });

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
