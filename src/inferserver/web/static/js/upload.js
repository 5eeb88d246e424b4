// One input file to the server, with progress. XHR, not fetch: fetch reports no upload progress.
//
// Today a plain PUT /sessions/{sid}/inputs/{name} (raw body, streamed to disk by the server). A resumable upload
// through the tus endpoint (being built on the `tus` branch) belongs here behind the same signature: pick it when
// the server offers it, resume from the offset it reports, and keep onProgress's meaning (bytes of the file sent).
import { ApiError, apiUrl, askCredentials, authHeaders } from "./api.js";

export async function upload(sessionId, name, file, onProgress) {
  for (;;) {
    const result = await put(sessionId, name, file, onProgress);
    if (result.status === 401) {
      await askCredentials(result.detail);
      continue;
    }
    if (result.status !== 200) throw new ApiError(result.status, result.detail);
    return result.data;
  }
}

function put(sessionId, name, file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", apiUrl(`sessions/${sessionId}/inputs/${encodeURIComponent(name)}`));
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    const started = performance.now();
    xhr.upload.onprogress = (event) => {
      const seconds = (performance.now() - started) / 1000;
      const rate = seconds > 0 ? event.loaded / seconds : 0;
      onProgress({ sent: event.loaded, total: file.size, rate, left: rate > 0 ? (file.size - event.loaded) / rate : null });
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: a proxy's page */ }
      resolve({
        status: xhr.status,
        data: body && body.data,
        detail: body && body.errors ? body.errors.map((e) => e.detail).join("; ") : xhr.statusText,
      });
    };
    // A connection the server closed (e.g. after a 413 sent before the body was read) or a network failure.
    xhr.onerror = () => resolve({ status: 0, detail: "the connection to the server was lost during the upload" });
    xhr.send(file);
  });
}
