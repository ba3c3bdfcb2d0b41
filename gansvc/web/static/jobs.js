// The jobs page: one ListJobs page, pushed by the server (SSE) whenever it changes.
"use strict";

const pageTokens = [""];  // tokens of the pages seen so far: [0] is the newest page
let pageIndex = 0;
let source = null;
let latest = null;
const picked = new Set();  // jobs ticked for the compare page (kept across pages)

function pick(id, on) {
  if (on) picked.add(id); else picked.delete(id);
  const button = document.getElementById("compare");
  button.disabled = picked.size < 1;
  button.textContent = picked.size ? "Compare " + picked.size : "Compare";
}

function query() {
  const params = new URLSearchParams();
  for (const box of document.querySelectorAll("input[name=state]:checked")) params.append("state", box.value);
  const kind = document.getElementById("kind").value;
  if (kind) params.set("kind", kind);
  const sweep = document.getElementById("sweep").value.trim();
  if (sweep) params.set("sweep", sweep);
  params.set("page_size", document.getElementById("page-size").value);
  if (pageTokens[pageIndex]) params.set("page_token", pageTokens[pageIndex]);
  return params.toString();
}

function progressCell(job) {
  const p = job.progress || {};
  if (!p.total_steps) return el("td", {}, job.kind === "training" ? "–" : "");
  const fraction = Math.min(1, p.step / p.total_steps);
  const bar = el("span", {class: "bar", title: (100 * fraction).toFixed(1) + " %"},
                 el("span", {style: "width:" + (100 * fraction).toFixed(1) + "%"}));
  return el("td", {class: "progress"}, bar, " " + p.step.toLocaleString("en") + " / " +
            p.total_steps.toLocaleString("en"));
}

function row(job, now) {
  const p = job.progress || {};
  const running = job.state === "RUNNING";
  const fid = (job.latest_metrics || {}).fid;
  const page = job.kind === "sweep" ? "/sweeps/" : "/jobs/";
  return el("tr", {"data-job": job.id},
    el("td", {}, el("input", {type: "checkbox", class: "pick", value: job.id, checked: picked.has(job.id),
                              onchange: (event) => pick(job.id, event.target.checked)})),
    el("td", {}, el("a", {href: page + encodeURIComponent(job.id)}, job.id)),
    el("td", {}, job.kind, job.sweep_id ? el("a", {href: "/sweeps/" + encodeURIComponent(job.sweep_id),
                                                   title: "its sweep"}, " #" + job.trial_number) : null),
    el("td", {}, stateBadge(job.state)),
    progressCell(job),
    el("td", {class: "num"}, running && p.total_steps ? fmtDuration(p.eta_seconds) : ""),
    el("td", {class: "num"}, running && p.images_per_sec ? fmtNumber(p.images_per_sec, 0) : ""),
    el("td", {class: "num"}, fid === undefined ? "" : fmtNumber(fid)),
    el("td", {class: "num"}, job.best_fid === null || job.best_fid === undefined ? "" : fmtNumber(job.best_fid)),
    el("td", {class: "place"}, fmtPlace(job)),
    el("td", {class: "num"}, job.attempts),
    el("td", {class: "num age", "data-created": job.created_at}, fmtDuration(now - job.created_at)),
    el("td", {class: "msg"}, job.message || ""));
}

function render(page) {
  latest = page;
  const now = Date.now() / 1000;
  const body = document.getElementById("job-rows");
  body.replaceChildren(...page.jobs.map((job) => row(job, now)));
  if (!page.jobs.length) body.append(el("tr", {}, el("td", {colspan: 13, class: "muted"}, "no jobs")));
  pageTokens.length = pageIndex + 1;
  if (page.next_page_token) pageTokens.push(page.next_page_token);
  document.getElementById("prev").disabled = pageIndex === 0;
  document.getElementById("next").disabled = !page.next_page_token;
  document.getElementById("page-label").textContent = "page " + (pageIndex + 1);
}

function connect() {
  if (source) source.close();
  const url = "/api/jobs/stream?" + query();
  source = new EventSource(url);
  const live = document.getElementById("live");
  source.onopen = () => { live.textContent = "live"; };
  source.onmessage = (message) => { showBanner("banner", ""); render(JSON.parse(message.data)); };
  source.addEventListener("upstream", (message) => {
    showBanner("banner", JSON.parse(message.data).error);
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    if (source.readyState === EventSource.CLOSED) {  // an HTTP error: EventSource gives up, so retry here
      getJSON("/api/jobs?" + query()).then(render).catch((error) => showBanner("banner", error.message));
      setTimeout(connect, 3000);
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sweep").value = new URLSearchParams(location.search).get("sweep") || "";
  document.getElementById("compare").addEventListener("click", () => {
    location.href = "/compare?jobs=" + Array.from(picked).map(encodeURIComponent).join(",");
  });
  for (const input of document.querySelectorAll("#filters input, #filters select")) {
    input.addEventListener("change", () => { pageTokens.length = 1; pageIndex = 0; connect(); });
  }
  document.getElementById("next").addEventListener("click", () => { pageIndex += 1; connect(); });
  document.getElementById("prev").addEventListener("click", () => {
    pageIndex = Math.max(0, pageIndex - 1);
    connect();
  });
  setInterval(() => {  // ages tick without a push
    const now = Date.now() / 1000;
    for (const cell of document.querySelectorAll("td.age")) cell.textContent = fmtDuration(now - cell.dataset.created);
  }, 1000);
  connect();
});
