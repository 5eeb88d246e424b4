// The run form, generated from a model's spec: a file picker per input, a control per parameter by type, a switch
// per optional input and output. `values()` gives the body of POST /models/{id}.
import { data } from "./api.js";

function field(container, id, labelText, control, help) {
  const row = document.createElement("div");
  row.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = labelText;
  control.id = id;
  row.append(label, control);
  if (help) {
    const p = document.createElement("p");
    p.className = "help";
    p.id = `${id}-help`;
    p.textContent = help;
    control.setAttribute("aria-describedby", p.id);
    row.append(p);
  }
  container.append(row);
  return row;
}

function problem(row, control, text) {
  let p = row.querySelector(".problem");
  if (!p) {
    p = document.createElement("p");
    p.className = "problem";
    p.id = `${control.id}-problem`;
    row.append(p);
  }
  p.textContent = text || "";
  control.setAttribute("aria-invalid", text ? "true" : "false");
  if (text) control.setAttribute("aria-errormessage", p.id);
}

function toggle(container, id, text, checked) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = checked;
  field(container, id, text, box);
  return box;
}

function paramControl(param) {
  if (param.type === "bool") {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = param.default;
    return box;
  }
  if (param.type === "enum") {
    const select = document.createElement("select");
    for (const [label, value] of Object.entries(param.enum)) {
      const option = new Option(label, String(value), false, value === param.default || label === param.default);
      option.dataset.value = JSON.stringify(value);
      select.append(option);
    }
    return select;
  }
  const input = document.createElement("input");
  if (param.type === "int" || param.type === "float") {
    input.type = "number";
    input.step = param.type === "int" ? "1" : "any";
    input.min = String(param.min);
    input.max = String(param.max);
  } else {
    input.type = "text";
  }
  input.value = String(param.default);
  return input;
}

function paramValue(param, control) {
  if (param.type === "bool") return { value: control.checked };
  if (param.type === "enum") return { value: JSON.parse(control.selectedOptions[0].dataset.value) };
  if (param.type === "string") return { value: control.value };
  const number = Number(control.value);
  if (control.value.trim() === "" || !Number.isFinite(number)) throw new Error(`${param.name}: enter a number`);
  if (param.type === "int" && !Number.isInteger(number)) throw new Error(`${param.name}: enter a whole number`);
  if (number < param.min || number > param.max) {
    throw new Error(`${param.name}: must be between ${param.min} and ${param.max}`);
  }
  return { value: number };
}

export class RunForm {
  constructor(modelId, spec) {
    this.modelId = modelId;
    this.spec = spec;
    this.inputs = {}; // name -> {enabled, picker, row, verdict}
    this.params = {};
    this.outputs = {};
  }

  render(inputsBox, paramsBox, outputsBox) {
    for (const box of [inputsBox, paramsBox, outputsBox]) box.replaceChildren(box.querySelector("legend"));
    for (const [name, io] of Object.entries(this.spec.inputs)) {
      const enabled = io.status === "required" ? null : toggle(inputsBox, `use-input-${name}`, `Use ${io.name}`, true);
      const picker = document.createElement("input");
      picker.type = "file";
      picker.accept = io.extension;
      const row = field(inputsBox, `input-${name}`, `${io.name} (${io.extension})`, picker, io.description);
      const entry = { enabled, picker, row, verdict: null };
      picker.addEventListener("change", () => this.check(name, entry));
      this.inputs[name] = entry;
    }
    for (const [name, param] of Object.entries(this.spec.params || {})) {
      const control = paramControl(param);
      const range = param.type === "int" || param.type === "float" ? ` (${param.min} to ${param.max})` : "";
      field(paramsBox, `param-${name}`, `${param.name}${range}`, control, param.description);
      this.params[name] = control;
    }
    paramsBox.hidden = Object.keys(this.params).length === 0;
    for (const [name, io] of Object.entries(this.spec.outputs)) {
      this.outputs[name] = io.status === "required" ? null : toggle(outputsBox, `use-output-${name}`, `Make ${io.name}`, true);
    }
    outputsBox.hidden = Object.values(this.outputs).every((box) => box === null);
  }

  // The server's own check on the file's first bytes, before any upload: the same rule an upload is held to.
  async check(name, entry) {
    const file = entry.picker.files[0];
    entry.verdict = null;
    problem(entry.row, entry.picker, "");
    if (!file) return;
    const io = this.spec.inputs[name];
    const head = await file.slice(0, 4096).arrayBuffer();
    const url = `models/${this.modelId}/inputs/${encodeURIComponent(name)}/check`;
    const verdict = await data(url, { method: "POST", body: head, headers: { "Content-Type": "application/octet-stream" } });
    entry.verdict = verdict;
    if (!verdict.acceptable) {
      const found = verdict.filetype ? `a ${verdict.filetype} file` : "not a file type the server recognises";
      problem(entry.row, entry.picker, `${file.name} is ${found}; ${io.name} needs a ${io.extension} file.`);
    } else if (verdict.can_convert) {
      problem(entry.row, entry.picker, "");
      entry.row.querySelector(".problem").textContent = `${file.name} will be converted to ${io.extension} by the server.`;
      entry.picker.setAttribute("aria-invalid", "false");
    }
  }

  enabledInputs() {
    return Object.entries(this.inputs).filter(([, e]) => !e.enabled || e.enabled.checked);
  }

  // The session request; throws an Error naming the field when something must be fixed first.
  async values() {
    const body = { inputs: {}, params: {}, outputs: {} };
    for (const [name, entry] of Object.entries(this.inputs)) {
      const enabled = !entry.enabled || entry.enabled.checked;
      body.inputs[name] = { enabled };
      if (!enabled) continue;
      const io = this.spec.inputs[name];
      if (!entry.picker.files[0]) throw new Error(`${io.name}: choose a ${io.extension} file`);
      if (entry.verdict === null) await this.check(name, entry);
      if (!entry.verdict.acceptable) throw new Error(entry.row.querySelector(".problem").textContent);
    }
    for (const [name, control] of Object.entries(this.params)) body.params[name] = paramValue(this.spec.params[name], control);
    for (const [name, box] of Object.entries(this.outputs)) body.outputs[name] = { enabled: !box || box.checked };
    return body;
  }
}
