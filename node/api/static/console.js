// ainode console: small helpers over the JSON API (no framework, no CDN).
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function toast(message, isError = false) {
  const box = $("#toast");
  box.textContent = message;
  box.className = "show" + (isError ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.className = ""), isError ? 7000 : 3500);
}

class ApiError extends Error {
  constructor(body, status) {
    super(body.message || `HTTP ${status}`);
    this.errors = body.errors || [];
    this.status = status;
  }
}

async function api(method, path, body, isForm = false) {
  const options = { method, headers: { "X-CSRF-Token": csrf(), Accept: "application/json" } };
  if (body !== undefined) {
    if (isForm) options.body = body;
    else { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body); }
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
  if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); }
  if (!response.ok) throw new ApiError(data, response.status);
  return data;
}

async function act(promise, success, reload = true) {
  try {
    const result = await promise;
    toast(typeof success === "function" ? success(result) : success);
    if (reload) setTimeout(() => location.reload(), 600);
    return result;
  } catch (error) {
    toast(error.message, true);
    return null;
  }
}

// -- jobs --------------------------------------------------------------------------------
$$("[data-job-action]").forEach((button) => button.addEventListener("click", () => {
  const { jobAction, job } = button.dataset;
  act(api("POST", `/api/jobs/${job}/${jobAction}`), (j) => `Job #${job}: ${jobAction === "retry" ? "retried" : "cancelled"} (now ${j.state})`);
}));
if ($("#rerun")) $("#rerun").addEventListener("click", async () => {
  const job = $("#rerun").dataset.job;
  const result = await act(api("POST", `/api/jobs/${job}/rerun`, { plugin: $("#rerun-plugin").value }), (j) => `Queued job #${j.id}`, false);
  if (result) setTimeout(() => (location = `/jobs/${result.id}`), 600);
});
if ($("#set-priority")) $("#set-priority").addEventListener("click", () => {
  const job = $("#set-priority").dataset.job;
  act(api("POST", `/api/jobs/${job}/priority`, { priority: Number($("#priority").value) }), "Priority changed");
});

// -- studies -----------------------------------------------------------------------------
$$("[data-complete]").forEach((button) => button.addEventListener("click", () => {
  act(api("POST", `/api/series/${button.dataset.complete}/complete`), "Series completed and routed");
}));

// -- rules -------------------------------------------------------------------------------
const ruleForm = $("#rule-form");

function ruleFromForm() {
  const f = ruleForm.elements;
  return {
    name: f.name.value.trim(),
    plugin: f.plugin.value,
    priority: f.priority.value === "" ? 5 : Number(f.priority.value),
    enabled: f.enabled.checked,
    send_to: $$('input[name="send_to"]:checked', ruleForm).map((i) => i.value),
    match: f.match.value,
  };
}
const editingId = () => (ruleForm && ruleForm.dataset.ruleId ? Number(ruleForm.dataset.ruleId) : null);

function showFieldErrors(errors) {
  $$(".field-error", ruleForm).forEach((el) => (el.textContent = ""));
  for (const { field, message } of errors) {
    const key = field.split(/[.[]/)[0];
    const el = $(`.field-error[data-field="${key}"]`, ruleForm) || $(`.field-error[data-field="match"]`, ruleForm);
    el.textContent = (el.textContent ? el.textContent + " · " : "") + (field !== key ? `${field}: ` : "") + message;
  }
}

async function validateRule() {
  const box = $("#validation");
  try {
    const result = await api("POST", "/api/rules/validate", { rule: ruleFromForm(), rule_id: editingId() });
    showFieldErrors(result.errors);
    if (result.valid) {
      box.className = "validation ok";
      box.textContent = "✓ Valid. Fires when: " + (result.conditions.join(" and ") || "every series (no conditions)");
    } else {
      box.className = "validation bad";
      box.textContent = `✗ ${result.errors.length} problem${result.errors.length === 1 ? "" : "s"} — see the fields above`;
    }
    return result.valid;
  } catch (error) { box.className = "validation bad"; box.textContent = error.message; return false; }
}

if (ruleForm) {
  let timer;
  ruleForm.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(validateRule, 300); });
  ruleForm.addEventListener("change", () => { clearTimeout(timer); timer = setTimeout(validateRule, 100); });
  if (editingId()) validateRule();  // a new, untouched form has nothing to report yet
  ruleForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = editingId();
    try {
      const saved = await api(id ? "PUT" : "POST", id ? `/api/rules/${id}` : "/api/rules", ruleFromForm());
      toast(`Rule “${saved.name}” saved (version ${saved.version}); it applies to the next series`);
      setTimeout(() => (location = `/rules/${saved.id}`), 700);
    } catch (error) { showFieldErrors(error.errors); toast(error.message, true); }
  });
  const del = $("#delete-rule");
  if (del) del.addEventListener("click", async () => {
    if (!confirm("Delete this rule? It can be restored from its versions (in the audit log).")) return;
    const result = await act(api("DELETE", `/api/rules/${editingId()}`), "Rule deleted", false);
    if (result) setTimeout(() => (location = "/rules"), 600);
  });
}

$$("#rule-order [data-move]").forEach((button) => button.addEventListener("click", () => {
  const items = $$("#rule-order li").map((li) => Number(li.dataset.ruleId));
  const id = Number(button.closest("li").dataset.ruleId);
  const i = items.indexOf(id), j = button.dataset.move === "up" ? i - 1 : i + 1;
  [items[i], items[j]] = [items[j], items[i]];
  act(api("POST", "/api/rules/order", { order: items }), "Order saved");
}));

$$("[data-restore]").forEach((button) => button.addEventListener("click", () => {
  act(api("POST", `/api/rules/${editingId()}/versions/${button.dataset.restore}/restore`), `Version ${button.dataset.restore} restored`);
}));

$$(".tab").forEach((tab) => tab.addEventListener("click", () => {
  $$(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  $$("[data-tab-body]").forEach((b) => b.classList.toggle("hidden", b.dataset.tabBody !== tab.dataset.tab));
}));

function candidate() {
  if (!ruleForm || $("#rule-form [name=name]").disabled) return null;
  const rule = ruleFromForm();
  return rule.name ? rule : null;
}

function renderTest(result) {
  const rows = result.results.map((r) => `<tr class="${r.candidate ? "candidate" : ""}">
      <td>${esc(r.rule)}${r.candidate ? ' <span class="badge">editor</span>' : ""}${r.enabled ? "" : ' <span class="badge muted">disabled</span>'}</td>
      <td>${esc(r.plugin)}</td>
      <td>${r.fires ? '<span class="result-fires">✓ fires</span>' : r.matched ? '<span class="result-no">matches, but disabled</span>' : '<span class="result-no">no</span>'}</td>
      <td>${r.failed.length ? "not met: " + r.failed.map(esc).join("; ") : ""}</td></tr>`).join("");
  const head = result.fires.length ? `<p class="alert"><strong>${result.fires.length} job${result.fires.length === 1 ? "" : "s"}</strong> would start: ${result.fires.map(esc).join(", ")}</p>` : '<p class="alert">No rule would fire: this series would be stored but not processed.</p>';
  $("#test-result").innerHTML = head + `<table id="test-table"><thead><tr><th>Rule</th><th>Plugin</th><th>Result</th><th>Why not</th></tr></thead><tbody>${rows}</tbody></table>`;
}

if ($("#run-test")) $("#run-test").addEventListener("click", async () => {
  const tab = $(".tab.active").dataset.tab;
  const rule = candidate();
  const rule_id = rule ? editingId() : null;
  try {
    let result;
    if (tab === "file") {
      const file = $("#test-file").files[0];
      if (!file) throw new Error("Choose a DICOM file first");
      const form = new FormData();
      form.append("file", file);
      if (rule) form.append("rule", JSON.stringify(rule));
      if (rule_id) form.append("rule_id", rule_id);
      result = await api("POST", "/api/rules/test/file", form, true);
    } else if (tab === "header") {
      let header;
      try { header = JSON.parse($("#test-header").value); } catch (e) { throw new Error("The header is not valid JSON: " + e.message); }
      result = await api("POST", "/api/rules/test", { header, rule, rule_id });
    } else {
      const series_uid = $("#test-series").value;
      if (!series_uid) throw new Error("No series to test: send one to the node first");
      result = await api("POST", "/api/rules/test", { series_uid, rule, rule_id });
    }
    renderTest(result);
  } catch (error) { $("#test-result").innerHTML = `<p class="alert error">${esc(error.message)}</p>`; }
});

async function replay(removeId) {
  const days = Number($("#replay-days").value || 7);
  const body = { days };
  if (removeId) body.remove_id = removeId;
  else { const rule = candidate(); if (rule) { body.rule = rule; body.rule_id = editingId(); } }
  try {
    const r = await api("POST", "/api/rules/replay", body);
    const onlyChanged = $("#replay-changed").checked;
    const items = r.items.filter((i) => !onlyChanged || i.added.length || i.removed.length);
    const names = (list) => list.map(esc).join(", ") || '<span class="muted">none</span>';
    const rows = items.map((i) => `<tr><td>${esc(i.study_date.replace(/^(\d{4})(\d{2})(\d{2})$/, "$1-$2-$3"))}</td><td>${esc(i.modality)}</td><td title="${esc(i.series_uid)}">${esc(i.series_description || "…" + i.series_uid.slice(-14))}</td>
        <td>${names(i.current)}</td><td>${names(i.proposed)}</td>
        <td>${i.added.map((n) => `<span class="added">+ ${esc(n)}</span>`).join(" ")} ${i.removed.map((n) => `<span class="removed">${esc(n)}</span>`).join(" ")}</td></tr>`).join("");
    $("#replay-result").innerHTML = `<div class="summary"><div><strong>${r.series}</strong>series in ${r.days} days</div><div><strong>${r.changed}</strong>would change</div><div><strong>${r.jobs_now} → ${r.jobs_proposed}</strong>jobs now → with the change</div>${r.unreadable ? `<div><strong>${r.unreadable}</strong>no longer readable</div>` : ""}</div>` +
      (items.length ? `<table id="replay-table"><thead><tr><th>Study date</th><th>Mod.</th><th>Series</th><th>Fires now</th><th>Would fire</th><th>Difference</th></tr></thead><tbody>${rows}</tbody></table>` : '<p class="empty">No series would be routed differently.</p>');
  } catch (error) { $("#replay-result").innerHTML = `<p class="alert error">${esc(error.message)}</p>`; }
}
if ($("#run-replay")) $("#run-replay").addEventListener("click", () => replay(null));
if ($("#replay-delete")) $("#replay-delete").addEventListener("click", () => replay(editingId()));
if ($("#test-series") && new URLSearchParams(location.search).get("series")) $("#run-test").click();

// -- destinations --------------------------------------------------------------------------
const destinationForm = $("#destination-form");
// The form has one field set per registered destination kind; the chosen one is enabled.
const kindFields = (kind) => $(`fieldset.destination-kind[data-kind="${kind}"]`, destinationForm);
function showDestinationKind(kind) {
  $$("fieldset.destination-kind", destinationForm).forEach((set) => {
    const chosen = set.dataset.kind === kind;
    set.disabled = !chosen; set.hidden = !chosen;
  });
}
function destinationFromForm() {
  const f = destinationForm.elements, kind = f.kind.value, body = { kind };
  for (const input of kindFields(kind).querySelectorAll("[data-field]")) {
    if (input.value === "" && !input.required) continue;
    const path = input.dataset.field.split("."), last = path.pop();
    let into = body;
    for (const key of path) into = into[key] ??= {};
    into[last] = input.type === "number" ? Number(input.value) : input.value;
  }
  // Settings the form does not show (e.g. TLS) are kept from the destination being edited.
  Object.assign(body, JSON.parse(destinationForm.dataset.keep || "{}"));
  return {
    ...body,
    max_attempts: f.max_attempts.value ? Number(f.max_attempts.value) : null, backoff_seconds: Number(f.backoff_seconds.value),
    max_backoff_seconds: Number(f.max_backoff_seconds.value), give_up_after_seconds: Number(f.give_up_after_hours.value) * 3600,
  };
}
const echoText = (r) => r.ok ? `<span class="state state-done">✓ ${r.seconds.toFixed(2)} s</span> <small>${esc(r.message)}</small>` : `<span class="state state-failed">✗ failed</span> <small class="err">${esc(r.message)}</small>`;
$$("[data-echo]").forEach((button) => button.addEventListener("click", async () => {
  const cell = $(`[data-echo-result="${button.dataset.echo}"]`);
  cell.innerHTML = '<span class="muted">testing…</span>';
  try { cell.innerHTML = echoText(await api("POST", `/api/destinations/${button.dataset.echo}/echo`)); }
  catch (error) { cell.innerHTML = `<span class="err">${esc(error.message)}</span>`; }
}));
$$("[data-delete-destination]").forEach((button) => button.addEventListener("click", () => {
  if (confirm(`Delete destination ${button.dataset.deleteDestination}?`)) act(api("DELETE", `/api/destinations/${button.dataset.deleteDestination}`), "Destination deleted");
}));
$$("[data-edit-destination]").forEach((button) => button.addEventListener("click", () => {
  const row = button.closest("tr"), d = JSON.parse(row.dataset.definition), f = destinationForm.elements;
  const kind = row.dataset.kind;
  f.name.value = button.dataset.editDestination; f.name.readOnly = true;
  f.kind.value = kind; f.kind.disabled = true; showDestinationKind(kind);
  const value = (path) => path.split(".").reduce((v, key) => (v == null ? v : v[key]), d);
  for (const input of kindFields(kind).querySelectorAll("[data-field]")) input.value = value(input.dataset.field) ?? "";
  for (const key of ["max_attempts", "backoff_seconds", "max_backoff_seconds"]) f[key].value = d[key] ?? "";
  f.give_up_after_hours.value = d.give_up_after_seconds / 3600;
  const keep = {};
  for (const key of (kindFields(kind).dataset.keep || "").split(",").filter(Boolean)) if (d[key] != null) keep[key] = d[key];
  destinationForm.dataset.keep = JSON.stringify(keep);
  destinationForm.dataset.mode = "update";
  $("#destination-form-title").textContent = `Edit destination “${f.name.value}”`;
  destinationForm.scrollIntoView({ behavior: "smooth" });
}));
if (destinationForm) {
  destinationForm.elements.kind.addEventListener("change", (event) => showDestinationKind(event.target.value));
  destinationForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = destinationForm.elements.name.value.trim();
    const method = destinationForm.dataset.mode === "update" ? "PUT" : "POST";
    try {
      await api(method, `/api/destinations/${encodeURIComponent(name)}`, destinationFromForm());
      toast(`Destination ${name} saved`); setTimeout(() => location.reload(), 600);
    } catch (error) {
      $(".form-errors", destinationForm).textContent = error.errors.length ? error.errors.map((e) => `${e.field}: ${e.message}`).join(" · ") : error.message;
    }
  });
  $("#echo-unsaved").addEventListener("click", async () => {
    const out = $("#echo-unsaved-result");
    out.innerHTML = '<span class="muted">testing…</span>';
    try { out.innerHTML = echoText(await api("POST", "/api/destinations/echo", destinationFromForm())); }
    catch (error) { out.innerHTML = `<span class="err">${esc(error.message)}</span>`; }
  });
}

// -- users ---------------------------------------------------------------------------------
const userForm = $("#user-form");
if (userForm) userForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = userForm.elements;
  try {
    await api("POST", "/api/users", { username: f.username.value.trim(), password: f.password.value, role: f.role.value });
    toast(`User ${f.username.value} added`); setTimeout(() => location.reload(), 600);
  } catch (error) { $(".form-errors", userForm).textContent = error.message; }
});
$$("[data-role]").forEach((b) => b.addEventListener("click", () => act(api("PATCH", `/api/users/${b.dataset.role}`, { role: b.dataset.newRole }), "Role changed")));
$$("[data-delete-user]").forEach((b) => b.addEventListener("click", () => {
  if (confirm(`Delete user ${b.dataset.deleteUser}?`)) act(api("DELETE", `/api/users/${b.dataset.deleteUser}`), "User deleted");
}));
$$("[data-revoke]").forEach((b) => b.addEventListener("click", () => act(api("DELETE", `/api/tokens/${b.dataset.revoke}`), "Token revoked")));
$$("[data-token]").forEach((b) => b.addEventListener("click", async () => {
  const name = prompt("Name for the token (what uses it)?", "monitoring");
  if (!name) return;
  try {
    const t = await api("POST", `/api/users/${b.dataset.token}/tokens`, { name });
    const box = $("#new-token");
    box.classList.remove("hidden");
    box.innerHTML = `New token for ${esc(t.username)} — copy it now, it is not shown again:<br><code>${esc(t.token)}</code>`;
  } catch (error) { toast(error.message, true); }
}));

// -- dashboard timeline: jobs done per bin and stacked per-stage medians (inline SVG) --------
const STAGE_COLOURS = { receive: "#8aa4c8", wait: "#c9b458", load: "#5aa0e0", infer: "#3fb16b", encode: "#a070d0", export: "#e0905a" };

function timelineSvg(data) {
  const W = 720, top = 90, gap = 16, low = 150, left = 44, right = 8, n = data.bins.length;
  const step = (W - left - right) / n, bw = Math.max(2, step * 0.7);
  const peak = Math.max(1, ...data.bins.map((b) => b.finished));
  const total = (b) => data.stages.reduce((s, k) => s + (b.median_seconds[k] || 0), 0);
  const slowest = Math.max(0.001, ...data.bins.map(total));
  const hm = (t) => new Date(t * 1000).toTimeString().slice(0, 5);
  const parts = [`<svg viewBox="0 0 ${W} ${top + gap + low + 20}" role="img" width="100%">`,
    `<text x="0" y="10" font-size="10">${peak} jobs</text><text x="0" y="${top + gap + 10}" font-size="10">${slowest.toFixed(1)} s</text>`];
  data.bins.forEach((b, i) => {
    const x = left + i * step, when = `${hm(b.start)}–${hm(b.start + data.bin_seconds)}`;
    const h = (b.finished / peak) * (top - 12);
    if (b.finished) parts.push(`<rect class="throughput" data-finished="${b.finished}" x="${x}" y="${top - h}" width="${bw}" height="${h}" fill="#3fb16b"><title>${when}: ${b.finished} done</title></rect>`);
    let y = top + gap + low;
    data.stages.forEach((k) => {
      const v = b.median_seconds[k];
      if (v === null || v === undefined) return;
      const sh = (v / slowest) * low;
      y -= sh;
      parts.push(`<rect class="stage" data-stage="${k}" data-seconds="${v}" x="${x}" y="${y}" width="${bw}" height="${sh}" fill="${STAGE_COLOURS[k] || "#999"}"><title>${when} ${k}: median ${v.toFixed(2)} s</title></rect>`);
    });
    if (i % Math.ceil(n / 8) === 0) parts.push(`<text x="${x}" y="${top + gap + low + 14}" font-size="10">${hm(b.start)}</text>`);
  });
  parts.push(`<line x1="${left}" x2="${W - right}" y1="${top}" y2="${top}" stroke="#ccc"/><line x1="${left}" x2="${W - right}" y1="${top + gap + low}" y2="${top + gap + low}" stroke="#ccc"/></svg>`);
  const legend = data.stages.map((k) => `<span class="sw" style="background:${STAGE_COLOURS[k]}"></span>${k}`).join(" ");
  return parts.join("") + `<p class="legend"><span class="sw done"></span>jobs done · median s: ${legend}</p>`;
}

const timelineBox = $("#timeline-chart");
if (timelineBox) api("GET", timelineBox.dataset.src).then((data) => {
  timelineBox.innerHTML = data.finished ? timelineSvg(data) : '<p class="empty">No job finished in the last 24 hours.</p>';
  timelineBox.dataset.finished = data.finished;
}).catch((error) => { timelineBox.innerHTML = `<p class="err">${esc(error.message)}</p>`; });
