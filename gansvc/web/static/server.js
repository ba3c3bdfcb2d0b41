// The server page: GetServerInfo, refreshed every 5 s (devices go busy and free).
"use strict";

function table(id, headings, rows, empty) {
  const node = document.getElementById(id);
  const head = el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h))));
  const body = el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))));
  if (!rows.length) body.append(el("tr", {}, el("td", {colspan: headings.length, class: "muted"}, empty || "none")));
  node.replaceChildren(head, body);
}

function render(info) {
  document.getElementById("version").textContent = "gansvc " + info.version + ", torch " + info.torch_version;
  const facts = [
    ["CPU kernels", info.cpu_capability], ["CUDA", info.cuda_available ? "available" : "not available"],
    ["CUDA architectures", (info.cuda_architectures || []).join(", ") || "–"],
    ["Losses", (info.losses || []).join(", ")], ["Precisions", (info.precisions || []).join(", ")],
    ["Max attempts", info.max_attempts], ["Data roots", (info.data_roots || []).join(", ") || "–"],
  ];
  document.getElementById("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  table("devices", ["Device", "Description", "State", "Slots free", "Jobs"], info.devices.map((d) => [
    d.name, d.description, d.busy ? "busy" : "free", d.free_slots + " / " + d.slots,
    el("span", {}, ...d.jobs.map((j) => el("a", {href: "/jobs/" + encodeURIComponent(j)}, j + " ")))]));
  table("models", ["Model", "Description", "Image sizes", "Plugin"], info.models.map((m) => [
    m.name, m.description, (m.image_sizes || []).join(", ") || "any", m.plugin || "built-in"]));
  table("datasets", ["Data set", "Kind", "Shape", "Train", "Test", "Classes", "Plugin"], info.datasets.map((d) => [
    d.name, d.kind, (d.shape || []).join("×") || "?", d.train_size < 0 ? "?" : d.train_size,
    d.test_size < 0 ? "?" : d.test_size, d.num_classes < 0 ? "?" : d.num_classes, d.plugin || "built-in"]));
  table("extractors", ["Extractor", "Description", "Plugin"], info.extractors.map((e) => [
    e.name, e.description, e.plugin || "built-in"]));
  table("plugin-problems", ["Kind", "Name", "Problem"], info.plugin_problems.map((p) => [p.kind, p.name, p.message]),
        "no problems");
  document.getElementById("selftest").textContent = JSON.stringify(info.kernel_selftest, null, 2);
}

async function refresh() {
  try {
    render(await getJSON("/api/server"));
    showBanner("banner", "");
    document.getElementById("live").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
  } catch (error) {
    showBanner("banner", error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => { refresh(); setInterval(refresh, 5000); });
