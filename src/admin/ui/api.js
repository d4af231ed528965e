// The viewer's only door to the admin API.
//
// Every call is same-origin with `credentials: 'same-origin'`: authentication is the HttpOnly
// session cookie set by `POST /api/v1/session`, which this page never sees. The token itself is
// sent once in that POST body and is never kept in a URL, localStorage or sessionStorage.

// The API lives next to the viewer: this module is served at <base>/ui/api.js and the API at
// <base>/api/v1/, so the viewer keeps working if the admin listener is mounted under a prefix.
const API_BASE = new URL('../api/v1/', import.meta.url);

/** An HTTP error from the API, with the parsed `{"error", "param"}` / `{"errors": [...]}` body. */
export class ApiError extends Error {
  constructor(status, body, fallback) {
    super(ApiError.messageOf(status, body, fallback));
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
  }

  /** The `[{param, message}]` list of a 400 answer (either shape), possibly empty. */
  get fieldErrors() {
    const body = this.body;
    if (!body || typeof body !== 'object') return [];
    if (Array.isArray(body.errors)) {
      return body.errors
        .filter((e) => e && typeof e === 'object')
        .map((e) => ({ param: typeof e.param === 'string' ? e.param : null, message: String(e.message ?? e.error ?? 'invalid value') }));
    }
    if (typeof body.param === 'string') return [{ param: body.param, message: String(body.error ?? 'invalid value') }];
    return [];
  }

  static messageOf(status, body, fallback) {
    if (body && typeof body === 'object') {
      if (typeof body.error === 'string' && body.error) return body.error;
      if (Array.isArray(body.errors) && body.errors.length) {
        return body.errors.map((e) => (e && (e.message || e.error)) || 'invalid value').join('; ');
      }
    }
    if (fallback) return fallback;
    if (status === 0) return 'The admin API could not be reached.';
    if (status === 403) return 'Your token does not have the scope for this.';
    if (status === 404) return 'Not available on this server.';
    if (status >= 500) return `The server failed to answer (HTTP ${status}).`;
    return `Request failed (HTTP ${status}).`;
  }
}

let unauthorizedHandler = () => {};

/** Registers what to do when any call (other than the session probe) answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/** The absolute URL of an API path with an optional query (URLSearchParams or plain object). */
export function apiUrl(path, query) {
  const url = new URL(path, API_BASE);
  if (query) {
    const params = query instanceof URLSearchParams ? query : new URLSearchParams(query);
    url.search = params.toString();
  }
  return url.href;
}

/**
 * Calls the API and returns the parsed JSON (or null for 204, or the raw text with `text: true`).
 * Throws ApiError for non-2xx answers and network failures; AbortError passes through untouched.
 * A 401 also triggers the unauthorized handler unless `expect401` is set.
 */
export async function api(path, { method = 'GET', query, body, signal, text = false, expect401 = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(apiUrl(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      signal,
    });
  } catch (error) {
    if (error && error.name === 'AbortError') throw error;
    throw new ApiError(0, null);
  }
  if (!response.ok) {
    let data = null;
    try {
      const raw = await response.text();
      data = raw ? JSON.parse(raw) : null;
    } catch {
      data = null;
    }
    const error = new ApiError(response.status, data);
    if (response.status === 401 && !expect401) unauthorizedHandler(error);
    throw error;
  }
  if (response.status === 204) return null;
  const raw = await response.text();
  if (text) return raw;
  try {
    return raw ? JSON.parse(raw) : null;
  } catch {
    throw new ApiError(response.status, null, 'The server sent an answer that is not JSON.');
  }
}
