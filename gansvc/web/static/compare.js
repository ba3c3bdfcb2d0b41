// The compare page: several jobs' series of one metric overlaid (against step or wall time since each job's
// start), and the settings in which their resolved specs differ.
"use strict";

const LINE_COLORS = ["#2f6fdf", "#d92d20", "#079455", "#dc6803", "#7a5af8", "#0e9384", "#c11574", "#667085"];
let answer = null;
let plot = null;

function selectedIds() {
  return document.getElementById("jobs").value.split(",").map((s) => s.trim()).filter(Boolean);
}

// one x column for every job (steps, or seconds since the job's first point), each job's values on it
function aligned(metric, axis) {
  const columns = [];
  const xs = new Set();
  for (const job of answer.jobs) {
    const series = (answer.series[job.id] || {})[metric];
    if (!series) { columns.push(new Map()); continue; }
    const start = series.time.length ? series.time[0] : 0;
    const x = axis === "time" ? series.time.map((t) => t - start) : series.step;
    const column = new Map(x.map((value, i) => [value, series.value[i]]));
    x.forEach((value) => xs.add(value));
    columns.push(column);
  }
  const sorted = Array.from(xs).sort((a, b) => a - b);
  return [sorted, ...columns.map((column) => sorted.map((x) => (column.has(x) ? column.get(x) : null)))];
}

function draw() {
  const node = document.getElementById("chart");
  if (plot) { plot.destroy(); plot = null; }
  node.replaceChildren();
  const metric = document.getElementById("metric").value;
  const axis = document.getElementById("axis").value;
  if (!answer || !metric) return;
  const data = aligned(metric, axis);
  const options = {
    title: metric, width: Math.max(400, Math.min(1100, node.clientWidth - 20 || 900)), height: 360,
    scales: {x: {time: false}},
    axes: [{label: axis === "time" ? "seconds since the job's first point" : "step"}, {size: 64}],
    series: [{label: axis}, ...answer.jobs.map((job, i) => ({label: job.id, stroke: LINE_COLORS[i % LINE_COLORS.length],
                                                               width: 1.5, spanGaps: true}))],
  };
  plot = new uPlot(options, data, node);
  node.dataset.metric = metric;
  node.dataset.points = String(data[0].length);
}

function renderDiff() {
  const table = document.getElementById("diff");
  const head = el("tr", {}, el("th", {}, "setting"),
                  ...answer.jobs.map((job) => el("th", {}, el("a", {href: "/jobs/" + encodeURIComponent(job.id)},
                                                                job.id))));  // prettier-ignore
  const rows = answer.diff.map((entry) => el("tr", {"data-field": entry.field}, el("td", {}, entry.field),
    ...answer.jobs.map((job) => el("td", {}, JSON.stringify(entry.values[job.id])))));
  if (!rows.length) rows.push(el("tr", {}, el("td", {class: "muted"}, "the specs are the same")));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

async function load() {
  const ids = selectedIds();
  if (!ids.length) {
    showBanner("banner", "pick jobs: their ids, comma-separated (or tick them on the jobs page)");
    return;
  }
  history.replaceState(null, "", "/compare?jobs=" + ids.map(encodeURIComponent).join(","));
  try {
    answer = await getJSON("/api/compare?jobs=" + ids.map(encodeURIComponent).join(","));
  } catch (error) { showBanner("banner", error.message); return; }
  showBanner("banner", "");
  const select = document.getElementById("metric");
  const previous = select.value || "fid";
  select.replaceChildren(...answer.metrics.map((name) => el("option", {value: name}, name)));
  select.value = answer.metrics.includes(previous) ? previous : (answer.metrics[0] || "");
  renderDiff();
  draw();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("jobs").value = new URLSearchParams(location.search).get("jobs") || "";
  document.getElementById("pick").addEventListener("submit", (event) => { event.preventDefault(); load(); });
  document.getElementById("metric").addEventListener("change", draw);
  document.getElementById("axis").addEventListener("change", draw);
  if (selectedIds().length) load();
});
