// One input file to the server, with progress. XHR, not fetch: fetch reports no upload progress.
//
// When the server offers tus 1.0.0 (OPTIONS <base>/uploads), the file goes up resumably: POST creates the upload,
// PATCHes send CHUNK-sized slices of the File (Blob.slice: nothing is read into memory), and a network error or a
// 5xx (also 408, and the 409 of a PATCH the server is still closing) is retried with back-off from the offset HEAD
// reports, never from zero: the server keeps what a broken PATCH delivered. The upload's URL is kept for the
// page's lifetime, so "Continue the run" after the retries gave up resumes it too. Without tus: a plain PUT.
import { ApiError, apiUrl, askCredentials, authHeaders } from "./api.js";

const TUS_VERSION = "1.0.0";
// Each chunk costs the server an fsync and a round trip; a break costs up to one chunk sent again (Chromium resends
// the request it was sending on a reused connection, which the server reads through to refuse). 16, 32 and 64 MiB
// went equally fast in bench/web_page.py.
const CHUNK = 32 * 1048576;
const RETRY_SECONDS = [1, 2, 4, 8, 15, 30, 30, 30, 30, 30]; // about 3 minutes of trying before saying so
const RETRIED = new Set([0, 408, 409, 500, 502, 503, 504]);
const FORGOTTEN = new Set([400, 404, 410, 413, 415]); // the server ended the upload: a retry must create one
const SHA256_HEADER = "Inferserver-Sha256";
const GONE = "the upload expired or was removed on the server; start it again";

let tusOffered = null; // null: not asked yet (or the server could not be reached)
const kept = new Map(); // `${sessionId}/${name}` -> {url, signature} of an unfinished tus upload

export async function upload(sessionId, name, file, onProgress) {
  // tus has no empty upload (Upload-Length is at least 1); PUT says what the server thinks of an empty file.
  if (file.size > 0 && (await offersTus())) return tusUpload(sessionId, name, file, meter(file.size, onProgress));
  const url = apiUrl(`sessions/${sessionId}/inputs/${encodeURIComponent(name)}`);
  const report = meter(file.size, onProgress);
  report(0);
  const result = await authorized(() => send("PUT", url, { "Content-Type": "application/octet-stream" }, file, report));
  if (result.status !== 200) throw new ApiError(result.status, result.detail);
  return result.data;
}

async function offersTus() {
  if (tusOffered === null) {
    const answer = await authorized(() => send("OPTIONS", apiUrl("uploads")));
    if (answer.status === 0) return false; // unreachable: the PUT's own error says so; ask again next time
    tusOffered = (answer.header("Tus-Version") || "").split(",").some((v) => v.trim() === TUS_VERSION);
  }
  return tusOffered;
}

async function tusUpload(sessionId, name, file, report) {
  const key = `${sessionId}/${name}`;
  const signature = `${file.name}\n${file.size}\n${file.lastModified}`;
  let { url, offset } = (await resumable(key, signature)) || { url: await create(sessionId, name, file), offset: 0 };
  kept.set(key, { url, signature });
  report(offset); // where it starts (and where the rate starts counting)
  let tries = 0;
  for (;;) {
    let failed;
    if (offset === null) { // after a failure: the server's offset
      const head = await tus("HEAD", url);
      if (head.status === 200) offset = Number(head.header("Upload-Offset"));
      else failed = head;
    }
    if (offset !== null) {
      if (offset >= file.size) { // the last PATCH landed but its answer was lost
        kept.delete(key);
        return { sha256: null };
      }
      const chunk = file.slice(offset, offset + CHUNK);
      const start = offset;
      const headers = { "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" };
      const patch = await tus("PATCH", url, headers, chunk, (sent) => report(start + sent));
      if (patch.status === 204) {
        offset = Number(patch.header("Upload-Offset"));
        if (offset > start) tries = 0; // progress: the back-off starts over
        else if (++tries > RETRY_SECONDS.length) throw new ApiError(0, "the server took none of the file's bytes");
        const sha256 = patch.header(SHA256_HEADER);
        if (sha256 !== null) {
          kept.delete(key);
          return { sha256 };
        }
        continue;
      }
      failed = patch;
      offset = null;
    }
    if (failed.status === 404 || failed.status === 410) {
      kept.delete(key);
      throw new ApiError(failed.status, GONE);
    }
    if (!RETRIED.has(failed.status) || tries === RETRY_SECONDS.length) {
      if (FORGOTTEN.has(failed.status)) kept.delete(key);
      throw new ApiError(failed.status, failed.detail);
    }
    const seconds = RETRY_SECONDS[tries++];
    const what = failed.status ? `the server answered ${failed.status}` : "the connection broke";
    report(null, `${what}; trying again in ${seconds} s`);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
}

// This input's unfinished upload of the same file ({url, offset}), if the server still has it.
async function resumable(key, signature) {
  const previous = kept.get(key);
  if (!previous) return null;
  kept.delete(key);
  if (previous.signature !== signature) {
    tus("DELETE", previous.url); // another file now: free the old one's disk reservation (best effort)
    return null;
  }
  const head = await tus("HEAD", previous.url);
  return head.status === 200 ? { url: previous.url, offset: Number(head.header("Upload-Offset")) } : null;
}

async function create(sessionId, name, file) {
  const metadata = [["session_id", sessionId], ["input", name]];
  if (plainName(file.name)) metadata.push(["filename", file.name]); // only for the server's records
  const creation = apiUrl("uploads");
  const answer = await tus("POST", creation, {
    "Upload-Length": String(file.size),
    "Upload-Metadata": metadata.map(([k, v]) => `${k} ${base64(v)}`).join(","),
  });
  if (answer.status !== 201) throw new ApiError(answer.status, answer.detail);
  return new URL(answer.header("Location"), creation).href; // relative (`uploads/<id>`): right under any prefix
}

// What the server takes as a file name: no path, nothing unprintable, at most 255 characters.
function plainName(name) {
  return /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]{1,255}$/u.test(name) && !/[/\\]/.test(name) && name !== "." && name !== "..";
}

function base64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

function tus(method, url, headers = {}, body = null, onSent = null) {
  return authorized(() => send(method, url, { "Tus-Resumable": TUS_VERSION, ...headers }, body, onSent));
}

// A call with the page's credentials; on 401 the page asks for them and the call is made again.
async function authorized(call) {
  for (;;) {
    const result = await call();
    if (result.status !== 401) return result;
    await askCredentials(result.detail);
  }
}

// One XHR: {status (0 for a broken connection), header(name), data, detail}. onSent(bytes of the body sent).
function send(method, url, headers = {}, body = null, onSent = null) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [key, value] of Object.entries({ ...authHeaders(), ...headers })) xhr.setRequestHeader(key, value);
    if (onSent) xhr.upload.onprogress = (event) => onSent(event.loaded);
    xhr.onload = () => {
      let answer = null;
      try { answer = JSON.parse(xhr.responseText); } catch { /* no body (HEAD, 204) or a proxy's page */ }
      resolve({
        status: xhr.status,
        header: (name) => xhr.getResponseHeader(name),
        data: answer && answer.data,
        detail: answer && answer.errors ? answer.errors.map((e) => e.detail).join("; ") : xhr.statusText,
      });
    };
    // A connection the server closed (e.g. after a 413 sent before the body was read) or a network failure.
    xhr.onerror = xhr.onabort = xhr.ontimeout = () => resolve({
      status: 0, header: () => null, data: null, detail: "the connection to the server was lost during the upload",
    });
    xhr.send(body);
  });
}

// Progress over the whole file: bytes the server has plus this chunk's, the rate since this upload() began.
function meter(total, onProgress) {
  const began = performance.now();
  let first = null;
  let last = 0;
  return (sent, note = "") => {
    if (sent === null) sent = last; // a note only (a retry): the bar stays where it was
    if (first === null) first = sent;
    last = sent;
    const seconds = (performance.now() - began) / 1000;
    const rate = seconds > 0 ? Math.max(0, sent - first) / seconds : 0;
    onProgress({ sent, total, rate, left: rate > 0 ? (total - sent) / rate : null, note });
  };
}
