// The version page's lineage graph (cytoscape.js, dagre layout) and loss chart (uPlot), drawn from the JSON the
// server embedded in the page. The tables beside them carry the same data without JavaScript.
(function () {
  "use strict";
  var COLORS = {lora: "#2f6fd0", ia3: "#c2410c", bitfit: "#7c3aed", prompt: "#0f766e", bottleneck: "#b45309",
                composition: "#be185d"};
  var PALETTE = ["#4d7c0f", "#0369a1", "#9d174d", "#6d28d9", "#a16207"];

  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function colorOf(method, seen) {
    if (!method) return "#9aa3b2";
    if (COLORS[method]) return COLORS[method];
    if (!(method in seen)) seen[method] = PALETTE[Object.keys(seen).length % PALETTE.length];
    return seen[method];
  }

  function href(ref) {  // acme/chat:3 -> /models/acme/chat/3
    var i = ref.lastIndexOf(":");
    return "/models/" + ref.slice(0, i) + "/" + ref.slice(i + 1);
  }

  function lineage() {
    var box = document.getElementById("lineage"), g = data("lineage-data");
    if (!box || !g || typeof cytoscape === "undefined") return;
    if (typeof cytoscapeDagre !== "undefined") cytoscape.use(cytoscapeDagre);
    var seen = {}, elements = [];
    g.nodes.forEach(function (n) {
      var label = n.hidden ? "outside your namespace" : (n.ref || n.id) + (n.method ? "\n" + n.method : "");
      elements.push({group: "nodes", data: {id: n.id, label: label, ref: n.external ? null : n.ref,
        color: colorOf(n.method || n.kind === "composition" && "composition", seen), root: n.id === g.root ? 1 : 0,
        external: n.external ? 1 : 0}});
    });
    g.edges.forEach(function (e, i) {
      elements.push({group: "edges", data: {id: "e" + i, source: e.parent, target: e.child, label: e.label}});
    });
    var cy = cytoscape({
      container: box, elements: elements, minZoom: 0.2, maxZoom: 1.3,
      layout: {name: "dagre", rankDir: "LR", nodeSep: 40, rankSep: 160, edgeSep: 10, padding: 30},
      style: [
        {selector: "node", style: {"background-color": "data(color)", "label": "data(label)", "color": "#1d2330",
          "text-wrap": "wrap", "text-valign": "bottom", "text-margin-y": 4, "font-size": 11, "width": 22, "height": 22}},
        {selector: "node[root = 1]", style: {"border-width": 4, "border-color": "#111827", "width": 28, "height": 28}},
        {selector: "node[external = 1]", style: {"shape": "round-rectangle", "border-style": "dashed",
          "border-width": 2, "border-color": "#9aa3b2", "background-opacity": 0.3}},
        {selector: "edge", style: {"curve-style": "bezier", "target-arrow-shape": "triangle", "width": 1.5,
          "line-color": "#9aa3b2", "target-arrow-color": "#9aa3b2", "label": "data(label)", "font-size": 10,
          "text-rotation": "autorotate", "text-background-color": "#fbfcfe", "text-background-opacity": 1,
          "text-background-padding": 2, "color": "#475467"}}
      ]
    });
    cy.on("tap", "node", function (evt) {
      var ref = evt.target.data("ref");
      if (ref && evt.target.data("root") !== 1) window.location.href = href(ref);
    });
    cy.on("mouseover", "node", function (evt) { box.style.cursor = evt.target.data("ref") ? "pointer" : ""; });
    cy.on("mouseout", "node", function () { box.style.cursor = ""; });
    cy.ready(function () { box.dataset.ready = "1"; });
    window.adapterhubLineage = cy;  // tests read the drawn graph through this
  }

  function lossChart() {
    var box = document.getElementById("loss-chart"), points = data("loss-data");
    if (!box || !points || !points.length || typeof uPlot === "undefined") return;
    var steps = [], train = {}, evals = {};
    points.forEach(function (p) {
      if (steps.indexOf(p.step) < 0) steps.push(p.step);
      if (typeof p.loss === "number") train[p.step] = p.loss;
      if (typeof p.eval_loss === "number") evals[p.step] = p.eval_loss;
    });
    steps.sort(function (a, b) { return a - b; });
    var column = function (m) { return steps.map(function (s) { return s in m ? m[s] : null; }); };
    var series = [{label: "step"}, {label: "training loss", stroke: "#2f6fd0", width: 2, spanGaps: true,
                                    points: {show: steps.length < 60}}];
    var columns = [steps, column(train)];
    if (Object.keys(evals).length) {
      series.push({label: "eval loss", stroke: "#c2410c", width: 2, dash: [6, 4], spanGaps: true, points: {show: true}});
      columns.push(column(evals));
    }
    var opts = {width: Math.max(300, box.clientWidth || 800), height: 260, scales: {x: {time: false}},
                axes: [{label: "step"}, {label: "loss"}], series: series};
    new uPlot(opts, columns, box);
  }

  function start() { lineage(); lossChart(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
