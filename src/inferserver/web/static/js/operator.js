// The operator view: every session, the GPU pool and recent failures, refreshed by a short poll of
// GET /operator/overview; a cancel button per live session (DELETE /sessions/{sid}).
import { ApiError, data, mib } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const LIVE = new Set(["waiting", "ready", "working"]);

function say(text, ok = false) {
  $("message").hidden = !text;
  $("message").textContent = text || "";
  $("message").classList.toggle("ok", ok);
  if (text) $("message").scrollIntoView({ block: "nearest" });
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.append(td);
  return td;
}

function clock(unix) {
  return unix ? new Date(unix * 1000).toLocaleTimeString() : "";
}

function age(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function cancel(sessionId, button) {
  button.disabled = true;
  try {
    const result = await data(`sessions/${sessionId}`, { method: "DELETE" });
    say(`Session ${sessionId} is ${result.status}${result.info ? ` (${result.info})` : ""}.`, true);
  } catch (error) {
    say(error instanceof ApiError ? error.message : `Could not cancel: ${error.message}`);
    button.disabled = false;
  }
  await refresh();
}

function render(view) {
  const sessions = $("sessions").querySelector("tbody");
  sessions.replaceChildren();
  for (const s of view.sessions) {
    const row = document.createElement("tr");
    row.dataset.session = s.session_id;
    cell(row, s.session_id.slice(0, 8)).title = s.session_id;
    cell(row, s.model_id);
    cell(row, s.info ? `${s.status}: ${s.info}` : s.status).className = `state-${s.status}`;
    cell(row, s.position ?? "");
    cell(row, s.starts_at ? clock(s.starts_at) : "");
    cell(row, s.engine ?? "this server's");
    cell(row, s.gpus.join(", "));
    cell(row, age(s.age_seconds));
    cell(row, mib(s.bytes));
    cell(row, s.owner ?? "");
    const action = cell(row, "");
    if (LIVE.has(s.status)) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Cancel";
      button.setAttribute("aria-label", `Cancel session ${s.session_id} (${s.model_id})`);
      button.addEventListener("click", () => cancel(s.session_id, button));
      action.append(button);
    }
    sessions.append(row);
  }
  const gpus = $("gpus").querySelector("tbody");
  gpus.replaceChildren();
  for (const g of view.gpus) {
    const row = document.createElement("tr");
    cell(row, g.device);
    cell(row, g.session_id ?? "free");
    cell(row, clock(g.since));
    gpus.append(row);
  }
  $("gpus-empty").hidden = view.gpus.length > 0;
  $("gpus").hidden = view.gpus.length === 0;
  const failures = $("failures").querySelector("tbody");
  failures.replaceChildren();
  for (const f of view.failures) {
    const row = document.createElement("tr");
    cell(row, f.session_id.slice(0, 8)).title = f.session_id;
    cell(row, f.model_id);
    cell(row, clock(f.finished));
    cell(row, f.reason);
    failures.append(row);
  }
}

async function refresh() {
  try {
    const view = await data("operator/overview");
    render(view);
    $("overview-status").textContent = `Updated at ${clock(view.now)}; refreshes every ${POLL_MS / 1000} s.`;
    return true;
  } catch (error) {
    $("overview-status").textContent = error instanceof ApiError ? error.message : `The server did not answer: ${error.message}`;
    return !(error instanceof ApiError && error.status === 403); // a non-operator stays refused: stop polling
  }
}

async function poll() {
  if (await refresh()) setTimeout(poll, POLL_MS);
}

poll();
