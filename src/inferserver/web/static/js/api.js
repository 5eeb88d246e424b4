// The public API as the page uses it: relative URLs (the page is at <base>/ui/, the API at <base>/), the
// credentials the user typed (kept in sessionStorage, for this tab only), and errors in plain words.

const BASE = new URL("../", document.baseURI);
const STORE_KEY = "inferserver.authorization";

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), BASE).href;
}

export function authHeaders() {
  const authorization = sessionStorage.getItem(STORE_KEY);
  // X-Requested-With: the server then answers 401 without a Basic challenge, so the browser shows no dialog of its
  // own and this page asks instead.
  return { "X-Requested-With": "XMLHttpRequest", ...(authorization ? { Authorization: authorization } : {}) };
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(explain(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

// What each status means for the person at the browser; the server's detail names the field, file or limit.
export function explain(status, detail) {
  const what = {
    0: "The upload did not reach the server",
    400: "The server could not accept this",
    403: "You are not allowed to do this",
    404: "The server does not know this (it may have been cleaned up)",
    408: "The upload stalled and the server gave up on it",
    409: "This conflicts with the session's state",
    410: "The upload expired on the server",
    413: "This is too large for the server",
    415: "The server does not take this kind of file or request",
    429: "Too many failed sign-ins from this computer",
    460: "The upload was damaged on the way (its checksum did not match)",
    502: "The server could not be reached behind its proxy",
    503: "The server is busy or not ready",
    504: "The server could not be reached behind its proxy",
    507: "The server's disk is full",
  }[status] || `The server answered with an error (${status})`;
  return detail ? `${what}: ${detail}.` : `${what}.`;
}

export async function detailOf(response) {
  try {
    const body = await response.json();
    return body.errors.map((e) => e.detail).join("; ");
  } catch {
    return "";
  }
}

let pending = null; // one sign-in dialog for every request that needs it

export function askCredentials(reason) {
  if (pending) return pending;
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  document.getElementById("login-reason").textContent =
    reason === "invalid credentials" ? "That user name and password were not accepted. Try again."
      : "This server needs a user name and password.";
  pending = new Promise((resolve) => {
    form.addEventListener("submit", () => {
      const user = document.getElementById("login-user").value;
      const password = document.getElementById("login-password").value;
      const bytes = new TextEncoder().encode(`${user}:${password}`);
      sessionStorage.setItem(STORE_KEY, `Basic ${btoa(String.fromCharCode(...bytes))}`);
      pending = null;
      resolve();
    }, { once: true });
  });
  document.getElementById("login-password").value = "";
  dialog.showModal();
  document.getElementById("login-user").select(); // typing replaces a name that was refused
  document.getElementById("login-user").focus();
  return pending;
}

// fetch with credentials; asks for them on a 401 and tries again; any other error is an ApiError.
export async function request(path, options = {}) {
  for (;;) {
    const response = await fetch(apiUrl(path), { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    if (response.status === 401) {
      await askCredentials(await detailOf(response));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response;
  }
}

export async function data(path, options) {
  return (await (await request(path, options)).json()).data;
}

export function mib(bytes) {
  return bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}
