// The job page: history from JSON endpoints, then live events over SSE (WatchJob), resumed after a drop.
"use strict";

const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const base = "/api/jobs/" + encodeURIComponent(jobId);
const GROUPS = [
  ["Losses", ["d_loss", "g_loss"]],
  ["D(x) and D(G(z))", ["d_real", "d_fake"]],
  ["FID", ["fid"]],
  ["Inception Score", ["is_mean"]],
  ["KID", ["kid_mean"]],
];
const COLORS = ["#2f6fdf", "#d92d20", "#079455", "#dc6803", "#7a5af8", "#0e9384"];
const LOG_LIMIT = 500;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const series = {};  // metric name -> {step: [], value: []}
const charts = {};  // chart title -> {plot, names}
let job = null;
let lastSequence = 0;
let source = null;
let grids = [];  // [{step, artifact}] in step order
let redrawPending = false;

function fileUrl(name, download) {
  return base + "/files/" + name.split("/").map(encodeURIComponent).join("/") + (download ? "?download=1" : "");
}

// ------------------------------------------------------------------ the run card
function renderJob() {
  document.title = job.id + " - gansvc";
  document.getElementById("job-id").textContent = job.id;
  document.getElementById("job-state").replaceChildren(stateBadge(job.state));
  document.getElementById("job-kind").textContent = job.kind + (job.sweep_id ? " (trial " + job.trial_number +
    " of " + job.sweep_id + ")" : "");
  renderProgress(job.progress || {});
  document.getElementById("job-device").textContent = fmtPlace(job) || "–";
  document.getElementById("job-attempts").textContent = job.attempts;
  document.getElementById("job-message").textContent = job.message || "";
  document.getElementById("cancel").disabled = TERMINAL.has(job.state) || job.cancel_requested;
  document.getElementById("spec").textContent = JSON.stringify(job.spec, null, 2);
}

function renderProgress(p) {
  const running = !job || job.state === "RUNNING";
  document.getElementById("job-progress").textContent = p.total_steps ?
    p.step.toLocaleString("en") + " / " + p.total_steps.toLocaleString("en") + " steps (" +
    (100 * p.step / p.total_steps).toFixed(1) + " %)" : "–";
  document.getElementById("job-rate").textContent = p.images_per_sec ? fmtNumber(p.images_per_sec, 0) : "–";
  document.getElementById("job-eta").textContent = running && p.total_steps ? fmtDuration(p.eta_seconds) : "–";
}

function renderBest(best) {
  const cell = document.getElementById("job-best");
  if (!best) { cell.textContent = "–"; return; }
  cell.replaceChildren("step " + best.step.toLocaleString("en") + ", " + best.metric + " " + fmtNumber(best.value, 3) +
    " ", el("a", {href: fileUrl(best.generator || "generator_best.pt", true)}, "generator"), " ",
    el("a", {href: fileUrl(best.artifact || "checkpoints/best.pt", true)}, "checkpoint"));
}

function renderDownloads(artifacts) {
  const wanted = artifacts.filter((a) => /^(generator.*\.pt|checkpoints\/.*\.pt|exports\/.*)$/.test(a.name));
  const links = wanted.map((a) => el("a", {href: fileUrl(a.name, true), "data-artifact": a.name},
    a.name + " (" + (a.size_bytes / 1048576).toFixed(1) + " MiB)"));
  document.getElementById("downloads").replaceChildren(...(links.length ? links : ["no files yet"]));
}

// ------------------------------------------------------------------ sample grids
function addGrid(step, artifact) {
  if (grids.some((g) => g.artifact === artifact)) return;
  const slider = document.getElementById("grid-slider");
  const atEnd = !grids.length || Number(slider.value) === grids.length - 1;
  grids.push({step, artifact});
  grids.sort((a, b) => a.step - b.step);
  slider.max = grids.length - 1;
  slider.disabled = grids.length < 2;
  if (atEnd) slider.value = grids.length - 1;
  showGrid();
}

function showGrid() {
  if (!grids.length) return;
  const slider = document.getElementById("grid-slider");
  const grid = grids[Number(slider.value)];
  const image = document.getElementById("grid-image");
  if (image.dataset.artifact !== grid.artifact) {
    image.src = fileUrl(grid.artifact, false);
    image.dataset.artifact = grid.artifact;
  }
  document.getElementById("grid-step").textContent = "step " + grid.step.toLocaleString("en");
  document.getElementById("grid-count").textContent = "grid " + (Number(slider.value) + 1) + " of " + grids.length;
}

function gridStep(name) {
  const match = /step_0*(\d+)\.png$/.exec(name);
  return match ? Number(match[1]) : null;
}

// ------------------------------------------------------------------ curves
function addPoint(name, step, value) {
  const s = series[name] || (series[name] = {step: [], value: []});
  if (s.step.length && step <= s.step[s.step.length - 1]) return;  // already in the history
  s.step.push(step);
  s.value.push(value === null ? null : Number(value));
}

function chartGroups() {
  const names = Object.keys(series).sort();
  const grouped = new Set();
  const groups = [];
  for (const [title, members] of GROUPS) {
    const present = members.filter((m) => series[m]);
    present.forEach((m) => grouped.add(m));
    if (present.length) groups.push([title, present]);
  }
  for (const name of names) if (!grouped.has(name)) groups.push([name, [name]]);
  return groups;
}

function alignedData(names) {
  const steps = Array.from(new Set(names.flatMap((n) => series[n].step))).sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const columns = names.map((n) => {
    const column = new Array(steps.length).fill(null);
    series[n].step.forEach((s, i) => { column[index.get(s)] = series[n].value[i]; });
    return column;
  });
  return [steps, ...columns];
}

function redraw() {
  redrawPending = false;
  const container = document.getElementById("charts");
  for (const [title, names] of chartGroups()) {
    const data = alignedData(names);
    let chart = charts[title];
    if (chart && chart.names.join() !== names.join()) { chart.plot.destroy(); chart.node.remove(); chart = null; }
    if (!chart) {
      const node = el("div", {class: "card chart", "data-chart": title, "data-metrics": names.join(",")});
      container.append(node);
      const width = Math.max(300, Math.min(560, node.clientWidth - 20 || 420));
      const options = {
        title, width, height: 220, scales: {x: {time: false}},
        axes: [{label: "step"}, {size: 64}],  // room for 5-digit values (images/s)
        series: [{label: "step"}, ...names.map((n, i) => ({label: n, stroke: COLORS[i % COLORS.length], width: 1.5,
                                                              spanGaps: true}))],
      };
      chart = charts[title] = {plot: new uPlot(options, data, node), names, node};
    } else {
      chart.plot.setData(data);
    }
    chart.node.dataset.points = String(data[0].length);
  }
}

function scheduleRedraw() {
  if (!redrawPending) { redrawPending = true; setTimeout(redraw, 300); }
}

// ------------------------------------------------------------------ events
function describe(event) {
  const d = event.data;
  switch (event.type) {
    case "state": return d.state + (d.reason ? ": " + d.reason : "") +
      (d.device && !(d.reason || "").includes(d.device) ? " on " + d.device : "");
    case "progress": return "step " + d.step + "/" + d.total_steps + ", " + fmtNumber(d.images_per_sec, 0) + " img/s";
    case "metrics": return "step " + d.step + ": " + Object.entries(d.values).map(([k, v]) => k + " " +
      fmtNumber(v, 4)).join(", ");
    case "samples": case "checkpoint": return "step " + d.step + ": " + d.artifact;
    case "warning": return "step " + d.step + ": " + d.code + ": " + d.message;
    case "log": return d.level + ": " + d.message;
    case "best": return "best " + d.metric + " " + fmtNumber(d.value, 4) + " at step " + d.step;
    default: return JSON.stringify(d);
  }
}

function severity(event) {
  const d = event.data;
  if (event.type === "warning" || event.type === "rollback" || (event.type === "log" && d.level === "warning")) {
    return "warn";
  }
  if ((event.type === "log" && d.level === "error") || (event.type === "state" && d.state === "FAILED")) return "bad";
  return "";
}

function logEvent(event) {
  const log = document.getElementById("log");
  const stuck = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  const time = new Date(event.time * 1000).toLocaleTimeString("en-GB");
  log.append(el("div", {class: severity(event), "data-seq": event.sequence, "data-type": event.type},
                "#" + event.sequence + " " + time + " " + event.type + " " + describe(event)));
  while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
  if (stuck) log.scrollTop = log.scrollHeight;
}

function onEvent(event) {
  if (event.sequence <= lastSequence) return;  // never twice, whatever the transport does
  lastSequence = event.sequence;
  document.body.dataset.lastSequence = String(lastSequence);
  logEvent(event);
  const d = event.data;
  if (event.type === "metrics") {
    for (const [name, value] of Object.entries(d.values)) addPoint(name, d.step, value);
    scheduleRedraw();
  } else if (event.type === "progress") {
    job.progress = d;
    renderProgress(d);
  } else if (event.type === "samples" && /\.png$/.test(d.artifact)) {
    addGrid(d.step, d.artifact);
  } else if (event.type === "best") {
    renderBest(d);
  } else if (event.type === "state" || event.type === "checkpoint") {
    refreshJob();
  }
}

async function refreshJob() {
  try {
    job = await getJSON(base);
    renderJob();
    renderDownloads((await getJSON(base + "/artifacts")).artifacts);
  } catch (error) {
    showBanner("banner", error.message);
  }
}

function connect() {
  const live = document.getElementById("live");
  source = new EventSource(base + "/events?after=" + lastSequence);
  source.onopen = () => { live.textContent = "live"; showBanner("banner", ""); };
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.addEventListener("upstream", (message) => showBanner("banner", JSON.parse(message.data).error));
  source.addEventListener("end", () => { source.close(); live.textContent = "ended"; refreshJob(); });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);  // HTTP error: retry ourselves
  };
}

async function start() {
  try {
    job = await getJSON(base);
  } catch (error) {
    showBanner("banner", error.message);
    setTimeout(start, 3000);
    return;
  }
  renderJob();
  // the log shows the latest few hundred events; the curves come whole (downsampled) from the series endpoint
  lastSequence = Math.max(0, job.last_sequence - 300);
  const [history, artifacts, best] = await Promise.all([
    getJSON(base + "/series"), getJSON(base + "/artifacts"), getJSON(base + "/best")]).catch((error) => {
    showBanner("banner", error.message);
    return [{series: {}}, {artifacts: []}, {best: null}];
  });
  for (const [name, s] of Object.entries(history.series)) series[name] = {step: s.step, value: s.value};
  redraw();
  for (const a of artifacts.artifacts) {
    const step = gridStep(a.name);
    if (a.name.startsWith("samples/") && step !== null) addGrid(step, a.name);
  }
  renderDownloads(artifacts.artifacts);
  renderBest(best.best);
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("grid-slider").addEventListener("input", showGrid);
  document.getElementById("cancel").addEventListener("click", async () => {
    const button = document.getElementById("cancel");
    button.disabled = true;
    const response = await fetch(base + "/cancel", {method: "POST"});
    const body = await response.json().catch(() => ({}));
    document.getElementById("cancel-result").textContent = response.ok ? "cancel requested" : body.error;
    if (!response.ok) button.disabled = false;
    refreshJob();
  });
  setInterval(() => {
    if (job) document.getElementById("job-age").textContent = fmtDuration(Date.now() / 1000 - job.created_at);
  }, 1000);
  start();
});
