// Run a model from the browser: choose it, fill in the form, upload, follow the queue and the log, see the result.
import { ApiError, data, mib, request } from "./api.js";
import { RunForm } from "./form.js";
import { upload } from "./upload.js";
import { showResult } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const FINAL = new Set(["complete", "failed"]);

let form = null;
let attempt = null; // {sessionId, uploaded: Set} kept across errors: a retry continues the same session

function say(text, ok = false) {
  const box = $("message");
  box.hidden = !text;
  box.textContent = text || "";
  box.classList.toggle("ok", ok);
  if (text) box.scrollIntoView({ block: "nearest" });
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.append(td);
  return td;
}

async function loadModels() {
  const ids = await data("models");
  const specs = await Promise.all(ids.map((id) => data(`models/${encodeURIComponent(id)}`)));
  const body = $("models").querySelector("tbody");
  body.replaceChildren();
  specs.forEach((spec, i) => {
    const row = document.createElement("tr");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Choose";
    button.setAttribute("aria-label", `Choose ${spec.name}`);
    button.addEventListener("click", () => choose(ids[i], spec));
    cell(row, "").append(button);
    for (const key of ["name", "organ", "task", "modality", "version", "status", "description"]) cell(row, spec[key]);
    body.append(row);
  });
  $("models").hidden = false;
  $("models-status").textContent = ids.length ? `${ids.length} models.` : "This server has no models.";
}

function choose(modelId, spec) {
  form = new RunForm(modelId, spec);
  attempt = null;
  form.render($("inputs"), $("params"), $("outputs"));
  $("run-title").textContent = `Run ${spec.name}`;
  $("run").hidden = false;
  $("submit").textContent = "Start the run";
  say("");
  $("inputs").querySelector("input")?.focus();
}

function progressRow(name, label) {
  const id = `upload-${name}`;
  let row = document.getElementById(id);
  if (!row) {
    row = document.createElement("p");
    row.id = id;
    row.innerHTML = `<label for="${id}-bar"></label> <progress id="${id}-bar" max="1" value="0"></progress> <span aria-live="off"></span>`;
    $("uploads").append(row);
  }
  row.querySelector("label").textContent = `Uploading ${label}`;
  return row;
}

function showProgress(row, p) {
  row.querySelector("progress").value = p.total ? p.sent / p.total : 1;
  const left = p.left === null ? "" : `, about ${Math.ceil(p.left)} s left`;
  const note = p.note ? ` (${p.note})` : ""; // e.g. a resumable upload waiting to try again
  const rate = `${(p.rate / 1048576).toFixed(1)} MiB/s`;
  row.querySelector("span").textContent = `${mib(p.sent)} of ${mib(p.total)}, ${rate}${left}${note}`;
}

async function submit(event) {
  event.preventDefault();
  say("");
  let body;
  try {
    body = await form.values();
  } catch (error) {
    say(error.message);
    return;
  }
  $("submit").disabled = true;
  try {
    if (attempt === null) {
      const created = await data(`models/${encodeURIComponent(form.modelId)}`, {
        method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
      });
      attempt = { sessionId: created.session_id, uploaded: new Set(), body };
    }
    $("progress").hidden = false;
    $("session-id").textContent = attempt.sessionId;
    for (const [name, entry] of form.enabledInputs()) {
      if (attempt.uploaded.has(name)) continue;
      const file = entry.picker.files[0];
      const row = progressRow(name, `${file.name} (${mib(file.size)})`);
      await upload(attempt.sessionId, name, file, (p) => showProgress(row, p));
      row.querySelector("label").textContent = `Uploaded ${file.name}`;
      attempt.uploaded.add(name);
    }
    $("submit").textContent = "Start the run";
    await follow(attempt.sessionId, attempt.body);
  } catch (error) {
    const what = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
    if (attempt && !(await stillWaiting(attempt.sessionId))) {
      attempt = null; // cancelled, cleaned up or already queued: this session takes no more uploads
      $("submit").textContent = "Start the run";
      say(`${what} This session cannot continue; "Start the run" starts a new one with the same choices.`);
    } else if (attempt) {
      // Nothing is lost: the session keeps what was uploaded, and the button continues it.
      $("submit").textContent = "Continue the run";
      say(`${what} Files already uploaded are kept; fix this and press "Continue the run".`);
    } else {
      say(what);
    }
  } finally {
    $("submit").disabled = false;
  }
}

async function stillWaiting(sessionId) {
  try {
    return (await data(`sessions/${sessionId}`)).status === "waiting";
  } catch {
    return false;
  }
}

async function streamLog(sessionId) {
  const log = $("log");
  log.textContent = "";
  const response = await request(`sessions/${sessionId}/logs`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = (rest + value).split("\n");
    rest = lines.pop();
    for (const line of lines) {
      if (line === "\0" || line === "") continue; // keep-alive
      if (line.startsWith("Waiting, position")) $("queue").textContent = line;
      else log.textContent += `${line}\n`;
    }
    log.scrollTop = log.scrollHeight;
  }
}

async function follow(sessionId, body) {
  $("state").textContent = "waiting";
  const logDone = streamLog(sessionId).catch((error) => say(`The log stopped: ${error.message}`));
  let status;
  for (;;) {
    status = await data(`sessions/${sessionId}`);
    $("state").textContent = status.status;
    $("state").className = `state-${status.status}`;
    if (status.status === "working") $("queue").textContent = "Running.";
    if (FINAL.has(status.status)) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  await logDone;
  $("queue").textContent = "";
  attempt = null;
  if (status.status === "failed") {
    $("reason").textContent = `— ${status.info === "cancelled" ? "the run was cancelled" : `the run failed: ${status.info}`}`;
    say(`The run failed: ${status.info}`);
    return;
  }
  $("reason").textContent = "";
  say("The run is complete.", true);
  $("result").hidden = false;
  const outputs = Object.keys(body.outputs).filter((name) => body.outputs[name].enabled);
  const first = form.enabledInputs()[0];
  await showResult(sessionId, form.spec, outputs, first ? first[1].picker.files[0] : null);
}

$("run-form").addEventListener("submit", submit);
loadModels().catch((error) => { $("models-status").textContent = error.message; });
