// Shared helpers of the dashboard's pages (no framework, no network beyond this server).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Where a job runs: its device, and the cluster nodes it spans when the server reports them (Job.nodes, a
// repeated field a Ray-backed server fills; absent or empty elsewhere), e.g. "cuda:0 @ node-a, node-b".
function fmtPlace(job) {
  const nodes = (job.nodes || []).filter((n) => n);
  const device = job.device || "";
  if (!nodes.length) return device;
  return (device ? device + " @ " : "") + nodes.join(", ");
}

function fmtNumber(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return Number(value).toFixed(digits === undefined ? 2 : digits);
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) return "–";
  seconds = Math.round(seconds);
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
}

function stateBadge(state) {
  return el("span", {class: "state " + state, "data-state": state, text: state});
}

async function getJSON(url) {
  const response = await fetch(url, {headers: {Accept: "application/json"}});
  const body = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showBanner(id, message) {
  const banner = document.getElementById(id);
  if (!banner) return;
  banner.textContent = message || "";
  banner.classList.toggle("shown", Boolean(message));
}
