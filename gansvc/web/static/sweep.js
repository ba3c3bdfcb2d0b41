// The sweep page: its trials (params, objective, state, pruned), objective by trial number, a parallel-coordinates
// view of the parameters against the objective, the best trial linked. Refreshed every 3 s while it runs.
"use strict";

const SWEEP_ID = decodeURIComponent(location.pathname.split("/").pop());
let objectivePlot = null;

function fmtParam(value) {
  return typeof value === "number" ? fmtNumber(value, Math.abs(value) < 0.01 && value !== 0 ? 6 : 4) : String(value);
}

function renderTable(sweep) {
  const head = el("tr", {}, el("th", {}, "trial"), el("th", {}, "job"), el("th", {}, "state"),
                  el("th", {}, sweep.metric), el("th", {}, "pruned"), ...sweep.params.map((p) => el("th", {}, p)),
                  el("th", {}, "reason"));  // prettier-ignore
  const best = sweep.best ? sweep.best.trial : null;
  const rows = sweep.trials.map((t) => el("tr", {"data-trial": t.trial, class: t.trial === best ? "best" : ""},
    el("td", {class: "num"}, (t.trial === best ? "★ " : "") + t.trial),
    el("td", {}, el("a", {href: "/jobs/" + encodeURIComponent(t.job_id)}, t.job_id)),
    el("td", {}, stateBadge(t.state)),
    el("td", {class: "num"}, fmtNumber(t.value, 3)),
    el("td", {}, t.pruned ? "pruned at step " + t.pruned_step : ""),
    ...sweep.params.map((p) => el("td", {class: "num"}, t.params[p] === undefined ? "" : fmtParam(t.params[p]))),
    el("td", {class: "msg"}, t.reason)));
  if (!rows.length) rows.push(el("tr", {}, el("td", {class: "muted"}, "no trials yet")));
  document.getElementById("trials").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function renderObjective(sweep) {
  const node = document.getElementById("objective-chart");
  const trials = sweep.trials.filter((t) => t.value !== null);
  const data = [trials.map((t) => t.trial), trials.map((t) => t.value)];
  if (objectivePlot) { objectivePlot.setData(data); return; }
  objectivePlot = new uPlot({
    width: Math.max(280, Math.min(560, (node.clientWidth || 440) - 10)), height: 240, scales: {x: {time: false}},
    axes: [{label: "trial"}, {size: 64}],
    series: [{label: "trial"}, {label: sweep.metric, stroke: "#2f6fdf", width: 0, points: {show: true, size: 8}}],
  }, data, node);
}

// one vertical axis per parameter plus the objective; one line per trial, coloured by its objective
function renderParallel(sweep) {
  const svg = document.getElementById("parallel");
  const NS = "http://www.w3.org/2000/svg";
  const make = (tag, attrs) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  svg.replaceChildren();
  const axes = [...sweep.params, sweep.metric];
  const width = Number(svg.getAttribute("width")), height = Number(svg.getAttribute("height"));
  const top = 24, bottom = height - 20, left = 40, step = (width - 2 * left) / Math.max(1, axes.length - 1);
  const valueOf = (t, axis) => (axis === sweep.metric && !sweep.params.includes(axis) ? t.value : t.params[axis]);
  const scales = axes.map((axis) => {
    const values = sweep.trials.map((t) => valueOf(t, axis)).filter((v) => v !== null && v !== undefined);
    if (values.some((v) => typeof v !== "number")) {  // categorical: evenly spaced
      const names = Array.from(new Set(values.map(String)));
      return (v) => bottom - (names.indexOf(String(v)) + 0.5) / names.length * (bottom - top);
    }
    const low = Math.min(...values), high = Math.max(...values);
    const logScale = low > 0 && high / low > 100;
    const f = (v) => (logScale ? Math.log(v) : v);
    return (v) => bottom - (high === low ? 0.5 : (f(v) - f(low)) / (f(high) - f(low))) * (bottom - top);
  });
  const finished = sweep.trials.filter((t) => t.value !== null).map((t) => t.value);
  const lo = Math.min(...finished), hi = Math.max(...finished);
  for (const trial of sweep.trials) {
    const points = [];
    axes.forEach((axis, i) => {
      const v = valueOf(trial, axis);
      if (v !== null && v !== undefined) points.push((left + i * step) + "," + scales[i](v));
    });
    let good = trial.value === null || hi === lo ? 0.5 : (trial.value - lo) / (hi - lo);
    if (sweep.direction === "minimize") good = 1 - good;
    const colour = trial.value === null ? "#98a2b3" : "hsl(" + Math.round(good * 120) + ",70%,42%)";
    const line = make("polyline", {points: points.join(" "), fill: "none", stroke: colour,
                                   "stroke-width": sweep.best && trial.trial === sweep.best.trial ? 3 : 1.5,
                                   "data-trial": trial.trial});  // prettier-ignore
    line.append(make("title", {}));
    line.lastChild.textContent = "trial " + trial.trial;
    svg.append(line);
  }
  axes.forEach((axis, i) => {
    svg.append(make("line", {x1: left + i * step, x2: left + i * step, y1: top, y2: bottom, stroke: "#667085"}));
    const label = make("text", {x: left + i * step, y: 14, "text-anchor": "middle", "font-size": 11});
    label.textContent = axis;
    svg.append(label);
  });
}

function renderFacts(sweep) {
  document.getElementById("sweep-id").textContent = sweep.sweep.id;
  document.getElementById("sweep-state").replaceChildren(stateBadge(sweep.sweep.state));
  const spec = sweep.sweep.spec || {};
  const best = sweep.best;
  const facts = [["objective", sweep.metric + " (" + sweep.direction + ")"], ["method", spec.method || ""],
                 ["trials", sweep.trials.length + " of " + (spec.trials || "?")], ["message", sweep.sweep.message]];
  const list = document.getElementById("facts");
  list.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  list.append(el("dt", {}, "best trial"), el("dd", {id: "best"}, best
    ? el("a", {href: "/jobs/" + encodeURIComponent(best.job_id)}, "trial " + best.trial + " (" + best.job_id + "): " +
         sweep.metric + " " + fmtNumber(best.value, 3))
    : "none yet"));
  document.getElementById("trial-jobs").href = "/?sweep=" + encodeURIComponent(sweep.sweep.id);
  document.getElementById("compare-trials").href = "/compare?jobs=" +
    sweep.trials.slice(0, 12).map((t) => encodeURIComponent(t.job_id)).join(",");
}

async function refresh() {
  let sweep;
  try {
    sweep = await getJSON("/api/sweeps/" + encodeURIComponent(SWEEP_ID));
  } catch (error) { showBanner("banner", error.message); setTimeout(refresh, 5000); return; }
  showBanner("banner", "");
  renderFacts(sweep);
  renderTable(sweep);
  renderObjective(sweep);
  renderParallel(sweep);
  if (sweep.sweep.state === "QUEUED" || sweep.sweep.state === "RUNNING") setTimeout(refresh, 3000);
}

document.addEventListener("DOMContentLoaded", refresh);
