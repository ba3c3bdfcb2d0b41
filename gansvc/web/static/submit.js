// The submit page: a form built from the server's own list of training settings (/api/spec/fields: names, help,
// defaults, bounds, choices), or a pasted TOML spec; a refused value is shown next to the field it names.
"use strict";

let fields = [];

function input(field) {
  const common = {name: field.name, id: "f-" + field.name, "data-field": field.name};
  if (field.choices.length) {
    return el("select", common, ...field.choices.map((c) => el("option", {value: c, selected: c === field.default},
                                                                 c === "" ? "(default)" : c)));  // prettier-ignore
  }
  if (field.type === "bool") {
    return el("select", common, el("option", {value: "true", selected: field.default === true}, "true"),
              el("option", {value: "false", selected: field.default === false}, "false"));
  }
  if (field.type === "dict") return el("textarea", {...common, rows: 2, cols: 40, placeholder: "{}"});
  const number = field.type === "int" || field.type === "float";
  return el("input", {...common, type: number ? "number" : "text", min: field.min, max: field.max,
                      step: field.type === "int" ? 1 : number ? "any" : undefined,
                      placeholder: field.default === null ? "" : String(field.default), size: 24});
}

function render() {
  const rows = fields.map((field) => el("tr", {"data-row": field.name},
    el("td", {}, el("label", {for: "f-" + field.name}, field.name)),
    el("td", {}, input(field)),
    el("td", {class: "msg"}, field.help,
       field.min !== null || field.max !== null ? el("span", {class: "muted"},
         " [" + (field.min === null ? "" : field.min) + " … " + (field.max === null ? "" : field.max) + "]") : null,
       el("div", {class: "field-error", "data-error-for": field.name}))));
  document.getElementById("fields").replaceChildren(el("tbody", {}, ...rows));
}

function clearErrors() {
  for (const node of document.querySelectorAll(".field-error")) node.textContent = "";
  showBanner("banner", "");
}

// settings the user changed from the default (the rest are left to the server, as the CLI does)
function formSettings() {
  const settings = {};
  for (const field of fields) {
    const node = document.getElementById("f-" + field.name);
    const value = node.value;
    if (value === "") continue;
    const shown = field.default === null ? "" : String(field.default);
    if (node.tagName === "SELECT" && value === shown) continue;
    settings[field.name] = value;
  }
  return settings;
}

async function send(body) {
  clearErrors();
  const response = await fetch("/api/submit", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify(body)});  // prettier-ignore
  const answer = await response.json().catch(() => ({error: response.statusText}));
  if (response.ok) { location.href = "/jobs/" + encodeURIComponent(answer.id); return; }
  const slot = answer.field && document.querySelector('[data-error-for="' + CSS.escape(answer.field) + '"]');
  if (slot) {
    slot.textContent = answer.error;
    const row = document.querySelector('[data-row="' + CSS.escape(answer.field) + '"]');
    if (row) row.scrollIntoView({block: "center"});
  } else {
    showBanner("banner", answer.error || response.statusText);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    fields = (await getJSON("/api/spec/fields")).fields;
  } catch (error) { showBanner("banner", error.message); return; }
  render();
  document.getElementById("form").addEventListener("submit", (event) => {
    event.preventDefault();
    send({settings: formSettings(), request_id: "web-" + crypto.randomUUID()});
  });
  document.getElementById("toml-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send({toml: document.getElementById("toml").value, request_id: "web-" + crypto.randomUUID()});
  });
});
