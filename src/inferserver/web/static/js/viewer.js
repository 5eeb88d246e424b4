// The result: a download link per output, and NiiVue showing the input with a volume output as a label overlay.
import { ApiError, apiUrl, authHeaders, detailOf, mib } from "./api.js";

export const VIEW_LIMIT = 512 * 1048576; // larger volumes are offered for download only: a browser tab cannot hold them
const VOLUME_EXTENSIONS = [".nii", ".nii.gz", ".nrrd"];

let viewer = null;
let niivueLoaded = null;

// NiiVue is 2.2 MB: fetched when there is something to show, not with the page (its first load stays ~40 kB).
function loadNiivue() {
  niivueLoaded ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "vendor/niivue/niivue.umd.js";
    script.onload = () => resolve(window.niivue);
    script.onerror = () => reject(new Error("the viewer (vendor/niivue/niivue.umd.js) did not load"));
    document.head.append(script);
  });
  return niivueLoaded;
}

function isVolume(io) {
  return (io.type === "volume" || io.type === "segmentation") && VOLUME_EXTENSIONS.includes(io.extension.toLowerCase());
}

function link(href, text, filename) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (filename) a.download = filename;
  return a;
}

// The output's bytes, unless it is over the limit (then null, from Content-Length, before the body is read).
async function fetchOutput(url) {
  const abort = new AbortController();
  const response = await fetch(url, { headers: authHeaders(), signal: abort.signal });
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  const size = Number(response.headers.get("Content-Length"));
  if (size > VIEW_LIMIT) {
    abort.abort();
    return { blob: null, size };
  }
  return { blob: await response.blob(), size };
}

export async function showResult(sessionId, spec, enabledOutputs, inputFile) {
  const list = document.getElementById("downloads");
  const message = document.getElementById("viewer-message");
  list.replaceChildren();
  message.textContent = "";
  let overlay = null;
  for (const name of enabledOutputs) {
    const io = spec.outputs[name];
    const filename = `${name}${io.extension}`;
    const url = apiUrl(`sessions/${sessionId}/outputs/${encodeURIComponent(name)}`);
    const item = document.createElement("li");
    list.append(item);
    const { blob, size } = await fetchOutput(url);
    if (blob === null) {
      // A plain link: the browser streams it to disk (with access control on it asks for the password itself).
      item.append(link(url, `Download ${io.name} (${filename}, ${mib(size)})`, filename));
      message.textContent = `${io.name} is ${mib(size)}: over the ${mib(VIEW_LIMIT)} a browser can show. Download it instead.`;
      continue;
    }
    const blobUrl = URL.createObjectURL(blob);
    item.append(link(blobUrl, `Download ${io.name} (${filename}, ${mib(size)})`, filename));
    if (overlay === null && isVolume(io)) overlay = { url: blobUrl, name: filename };
  }
  if (overlay === null) return;
  if (!inputFile || inputFile.size > VIEW_LIMIT) {
    message.textContent = inputFile ? `The input is over ${mib(VIEW_LIMIT)}: only the download links are shown.` : "";
    if (inputFile) return;
  }
  await showVolumes(inputFile, overlay);
}

async function showVolumes(inputFile, overlay) {
  const canvas = document.getElementById("viewer");
  const controls = document.getElementById("viewer-controls");
  document.getElementById("viewer-box").hidden = false;
  controls.hidden = false;
  if (viewer === null) {
    const niivue = await loadNiivue();
    viewer = new niivue.Niivue({ backColor: [0, 0, 0, 1], crosshairColor: [0.3, 0.8, 1, 1], show3Dcrosshair: true });
    await viewer.attachToCanvas(canvas);
    bindControls();
  }
  const opacity = Number(document.getElementById("opacity").value);
  const volumes = [];
  // URLs without an extension (blob:) need `name`, from which NiiVue tells the format.
  if (inputFile) volumes.push({ url: URL.createObjectURL(inputFile), name: inputFile.name });
  volumes.push({ url: overlay.url, name: overlay.name, colormap: "red", opacity: inputFile ? opacity : 1, cal_min: 0.5, cal_max: 1 });
  await viewer.loadVolumes(volumes);
  document.getElementById("viewer-message").textContent = "The output is shown in red over the input.";
}

function bindControls() {
  const opacity = document.getElementById("opacity");
  opacity.addEventListener("input", () => {
    if (viewer.volumes.length > 1) viewer.setOpacity(1, Number(opacity.value));
  });
  const types = {
    axial: viewer.sliceTypeAxial, coronal: viewer.sliceTypeCoronal, sagittal: viewer.sliceTypeSagittal,
    render: viewer.sliceTypeRender, multiplanar: viewer.sliceTypeMultiplanar,
  };
  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => viewer.setSliceType(types[button.dataset.view]));
  }
}
