// campaignctl web front-end: live refresh, and the new-campaign form's helpers.
// Every text shown comes as HTML rendered (and escaped) by the server, or is set with
// textContent: nothing from the data is ever parsed as HTML here.
"use strict";

function stamp(text) {
  const updated = document.getElementById("updated");
  if (updated) updated.textContent = "updated " + text + " UTC";
}

function now() {
  return new Date().toISOString().slice(11, 19);
}

// A page with a #live region polls its JSON endpoint (every data-refresh-ms) while something runs.
function live() {
  const region = document.getElementById("live");
  if (!region) return;
  stamp(now());
  if (region.dataset.live !== "yes") return;
  const period = Number(region.dataset.refreshMs) || 2000;
  // The next read is planned once this one is done: a slow answer never piles up requests.
  async function refresh() {
    let again = true;
    try {
      const response = await fetch(region.dataset.liveUrl, {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401) { window.location.reload(); return; }
      const data = await response.json();
      if (data.html !== undefined) {
        region.innerHTML = data.html;  // rendered by the server's templates, escaped there
        stamp(data.updated);
        confirmations(region);
      }
      again = Boolean(data.live);
    } catch (error) {
      const updated = document.getElementById("updated");
      if (updated) updated.textContent = "cannot refresh: " + error;
    }
    if (again) setTimeout(refresh, period);
  }
  setTimeout(refresh, period);
}

function confirmations(root) {
  root.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

// The new-campaign form: names or selector, rows, live device count, firmwares.
function campaignForm() {
  const form = document.getElementById("campaign-form");
  if (!form) return;
  const mode = () => (form.querySelector("input[name=select]:checked") || {}).value;
  const showMode = () => form.classList.toggle("by-names", mode() === "names");
  form.querySelectorAll("input[name=select]").forEach((r) => r.addEventListener("change", () => { showMode(); count(); }));
  showMode();

  form.addEventListener("click", (event) => {
    const target = event.target;
    if (target.classList.contains("add-row")) {
      const body = form.querySelector(`table[data-rows=${target.dataset.for}] tbody`);
      const row = body.rows[body.rows.length - 1].cloneNode(true);
      row.querySelectorAll("input").forEach((input) => { input.value = ""; });
      body.appendChild(row);
    } else if (target.classList.contains("remove-row")) {
      const body = target.closest("tbody");
      const row = target.closest("tr");
      if (body.rows.length > 1) row.remove(); else row.querySelectorAll("input").forEach((i) => { i.value = ""; });
    }
  });

  const counter = document.getElementById("device-count");
  let pending = null;
  async function count() {
    const params = new URLSearchParams();
    params.set("select", mode());
    ["names", "device_type", "tags"].forEach((name) => params.set(name, form.elements[name].value));
    const response = await fetch(counter.dataset.countUrl + "?" + params, {credentials: "same-origin"});
    const data = await response.json();
    counter.textContent = "";
    if (data.error) {
      const span = document.createElement("span");
      span.className = "error";
      span.textContent = data.error;
      counter.appendChild(span);
    } else {
      const strong = document.createElement("strong");
      strong.textContent = String(data.count);
      counter.append(strong, " matching devices");
    }
  }
  function later() { clearTimeout(pending); pending = setTimeout(count, 300); }
  ["names", "tags"].forEach((name) => form.elements[name].addEventListener("input", later));

  const type = document.getElementById("device_type");
  const firmware = document.getElementById("firmware");
  const keys = document.getElementById("firmware-keys");
  let options = [];
  function showKeys() {
    const chosen = options.find((o) => o.value === firmware.value);
    const body = keys.querySelector("tbody");
    body.textContent = "";
    keys.hidden = !chosen;
    if (!chosen) return;
    const rows = [[chosen.version_key, chosen.version, chosen.version], [chosen.url_key, chosen.url, "–"]];
    if (chosen.token_key) rows.push([chosen.token_key, chosen.token ? "*** (from the registry)" : "(no token)", "–"]);
    rows.forEach((cells) => {
      const tr = body.insertRow();
      cells.forEach((text, i) => {
        const td = tr.insertCell();
        if (i === 0) { const code = document.createElement("code"); code.textContent = text; td.appendChild(code); }
        else td.textContent = text;
      });
    });
  }
  async function loadFirmwares() {
    const selected = firmware.value || firmware.dataset.selected;
    firmware.length = 1;
    options = [];
    if (type.value) {
      const response = await fetch(firmware.dataset.optionsUrl + "?" + new URLSearchParams({device_type: type.value}),
                                   {credentials: "same-origin"});
      options = await response.json();
      options.forEach((o) => {
        const option = new Option(`${o.firmware_type} ${o.version}` + (o.recalled ? " (recalled)" : ""), o.value);
        option.disabled = o.recalled;
        firmware.add(option);
      });
      firmware.value = options.some((o) => o.value === selected) ? selected : "";
    }
    showKeys();
  }
  type.addEventListener("change", () => { count(); loadFirmwares(); });
  firmware.addEventListener("change", showKeys);
  if (type.value) loadFirmwares();
}

document.addEventListener("DOMContentLoaded", () => {
  live();
  confirmations(document);
  campaignForm();
});
