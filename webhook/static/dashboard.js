// Dashboard: polls /v1/dashboard with the bearer token kept in sessionStorage.
// Everything user-supplied (prompts, ids) goes in via textContent, never innerHTML.
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "kling.apiToken";
const STATUS_ORDER = ["queued", "submitted", "processing", "succeeded", "archived", "failed", "cancelled", "expired"];
const FILTER_KEY = "kling.statusFilter";
const TENANT_KEY = "kling.tenantFilter";
const $ = (id) => document.getElementById(id);
// Presigned URLs change on every refresh; keep the first one per output so thumbnails do not reload.
const thumbnails = new Map();
const figureByKey = new Map();
let timer = null;

function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = String(text);
  return node;
}

function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status);
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function showLogin(message) {
  clearTimeout(timer);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("error").hidden = true;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
}

function renderCounts(counts) {
  const box = $("counts");
  box.replaceChildren();
  for (const status of STATUS_ORDER) {
    const count = counts[status] ?? 0;
    const item = el("span", { "data-count": status });
    item.append(badge(status), document.createTextNode(` ${count}`));
    box.append(item);
  }
}

function renderJobs(jobs) {
  const rows = jobs.map((job) => {
    const tr = el("tr", { "data-job-id": job.id, "data-status": job.status, "data-tenant": job.tenant });
    tr.append(el("td", { class: "id", title: job.id }, job.id.slice(0, 8)));
    tr.append(el("td", { class: "tenant" }, job.tenant));
    const status = el("td");
    status.append(badge(job.status));
    // Only a queued job can still be stopped before Kling bills it (POST /v1/jobs/{id}/cancel).
    if (job.status === "queued" && !job.cancel_requested_at) {
      const button = el("button", { type: "button", class: "cancel", "data-cancel": job.id }, "cancel");
      button.addEventListener("click", () => cancelJob(job.id, button));
      status.append(button);
    }
    if (job.error) status.append(el("div", { class: "error" }, `${job.error.code}: ${job.error.message || ""}`));
    tr.append(status);
    tr.append(el("td", { class: "prompt", title: job.params.prompt || "" }, job.params.prompt || ""));
    tr.append(el("td", {}, job.params.n || 1));
    const timeline = el("td");
    const line = el("div", { class: "timeline" });
    for (const t of job.transitions) {
      line.append(badge(t.to), el("time", { datetime: t.at, title: `${t.source} at ${t.at}` }, time(t.at)));
    }
    timeline.append(line);
    tr.append(timeline);
    return tr;
  });
  $("jobs").replaceChildren(...rows);
}

// An output's media element: a video plays in place (only its metadata loads until played).
function media(output, url) {
  if (output.type === "video") {
    return el("video", { src: url, controls: "", preload: "metadata", "data-archived": String(output.archived) });
  }
  return el("img", { src: url, alt: `job ${output.job_id} image ${output.index}`, loading: "lazy" });
}

function renderGallery(gallery) {
  const keys = new Set();
  const figures = gallery.map((output) => {
    const key = `${output.job_id}/${output.index}`;
    keys.add(key);
    // A video first shown from its source URL switches to the archived copy once there is one.
    const shown = thumbnails.get(key);
    if (!shown || (output.archived && !shown.archived)) {
      thumbnails.set(key, { url: output.url, archived: output.archived });
      figureByKey.delete(key);
    }
    // Re-use the figure drawn before: a new <video> on every refresh would stop a playing video.
    if (!figureByKey.has(key)) {
      const figure = el("figure", { "data-image": key, "data-type": output.type || "image" });
      const duration = output.duration ? ` (${output.duration} s)` : "";
      const caption = `${output.job_id.slice(0, 8)} #${output.index}${duration}`;
      figure.append(media(output, thumbnails.get(key).url), el("figcaption", { title: output.sha256 || "" }, caption));
      figureByKey.set(key, figure);
    }
    return figureByKey.get(key);
  });
  for (const key of [...figureByKey.keys()]) {
    if (!keys.has(key)) {
      figureByKey.delete(key);
      thumbnails.delete(key);
    }
  }
  $("gallery").replaceChildren(...figures);
}

async function cancelJob(id, button) {
  button.disabled = true;
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/cancel`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) showError(await describeFailure(response));
  } catch (err) {
    showError(`cannot reach the server (${err})`);
  }
  clearTimeout(timer);
  refresh();
}

function showError(message) {
  $("error").hidden = false;
  $("error").textContent = `Cannot load the dashboard data: ${message}`;
  $("updated").textContent = `failed ${new Date().toLocaleTimeString()}`;
  $("logout").hidden = false;
}

// "HTTP 500 Internal Server Error: <the API's error message>", from a JSON {"error": ...} body or text.
async function describeFailure(response) {
  const text = await response.text().catch(() => "");
  let detail = text.trim().split("\n")[0].slice(0, 300);
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") detail = body.error;
  } catch (err) {
    // not JSON: the first line of the text is the best there is
  }
  const status = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
  return detail ? `${status}: ${detail}` : status;
}

async function refresh() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin("");
  let response;
  try {
    const query = new URLSearchParams();
    for (const [name, id] of [["status", "status-filter"], ["tenant", "tenant-filter"]]) {
      if ($(id).value) query.set(name, $(id).value);
    }
    const url = query.toString() ? `/v1/dashboard?${query}` : "/v1/dashboard";
    response = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (err) {
    showError(`cannot reach the server (${err})`);
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin("That token was refused.");
  }
  let data = null;
  if (!response.ok) {
    showError(await describeFailure(response));
  } else {
    try {
      data = await response.json();
    } catch (err) {
      showError(`HTTP ${response.status}, but the answer is not JSON (${err})`);
    }
  }
  if (data !== null) {
    $("error").hidden = true;
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    $("slots").textContent = data.slots.in_use === null ? `? / ${data.slots.limit}` : `${data.slots.in_use} / ${data.slots.limit}`;
    $("at-risk").textContent = data.images_at_risk ?? "?";
    $("backlog").textContent = data.outbox_backlog ?? "?";
    renderAccounts(data.accounts_not_active);
    renderCounts(data.counts);
    renderTenants(data.tenants);
    renderJobs(data.jobs);
    renderGallery(data.gallery);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

// The tenant filter's choices, rebuilt only when the list changed (an open dropdown stays open).
// The chosen tenant stays a choice even if it is gone from the list.
function renderTenants(tenants) {
  const select = $("tenant-filter");
  const chosen = select.value;
  const names = chosen && !tenants.includes(chosen) ? [...tenants, chosen] : tenants;
  const shown = [...select.options].slice(1).map((option) => option.value);
  if (shown.join("\n") === names.join("\n")) return;
  select.replaceChildren(el("option", { value: "" }, "all tenants"), ...names.map((name) => el("option", { value: name }, name)));
  select.value = chosen;
}

function renderAccounts(accounts) {
  const banner = $("accounts-banner");
  if (!accounts || accounts.length === 0) {
    banner.hidden = true;
    return;
  }
  const parts = accounts.map((a) => `${a.name}: ${a.reason}${a.since ? ` since ${new Date(a.since).toLocaleTimeString()}` : ""}`);
  banner.textContent = `Accounts not taking jobs (queued jobs wait): ${parts.join("; ")}`;
  banner.hidden = false;
}

for (const status of STATUS_ORDER) $("status-filter").append(el("option", { value: status }, status));
$("status-filter").value = sessionStorage.getItem(FILTER_KEY) || "";
// The tenants arrive with the data: a remembered choice is an option until they do.
const savedTenant = sessionStorage.getItem(TENANT_KEY);
if (savedTenant) $("tenant-filter").append(el("option", { value: savedTenant }, savedTenant));
$("tenant-filter").value = savedTenant || "";
for (const [id, key] of [["status-filter", FILTER_KEY], ["tenant-filter", TENANT_KEY]]) {
  $(id).addEventListener("change", () => {
    sessionStorage.setItem(key, $(id).value);
    clearTimeout(timer);
    refresh();
  });
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("");
});

takeTokenFromFragment();
refresh();
