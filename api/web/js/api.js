// The /v1 REST API with the signed-in key in an Authorization header, including the event stream
// (fetch with a streamed body instead of EventSource, which cannot send headers) and images (fetched
// as blobs, so the key never appears in a URL).

const KEY_NAME = "mapo.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.param = error.param ?? null;
    // A refused upload lists each problem ({row, field, reason}); a body the schema refuses lists each
    // field ({param, message}).
    this.problems = error.problems ?? [];
    this.details = error.details ?? [];
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
}

export function storeKey(key, { remember }) {
  forgetKey();
  (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
}

export class Api {
  constructor(key, { onUnauthorized }) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
    this.images = new Map(); // path → Promise of an object URL
  }

  async request(path, { method = "GET", headers = {}, body, signal } = {}) {
    const response = await fetch(path, {
      method,
      body,
      signal,
      cache: "no-store",
      headers: { Authorization: `Bearer ${this.key}`, ...headers },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const error = new ApiError(response.status, body);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async json(path, options) {
    return (await this.request(path, options)).json();
  }

  /** POST `body` (if given) as JSON; resolves with the JSON answer. */
  post(path, body) {
    if (body === undefined) return this.json(path, { method: "POST" });
    return this.json(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  /**
   * POST a multipart form, calling `onProgress(sent, total)` as its bytes go out: XMLHttpRequest, since
   * fetch cannot tell how much of a request body has been sent, and a dataset may be gigabytes. Resolves
   * with the JSON answer; aborting `signal` cancels the upload.
   */
  upload(path, form, { onProgress, signal } = {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Authorization", `Bearer ${this.key}`);
      xhr.responseType = "json";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress?.(event.loaded, event.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
        const error = new ApiError(xhr.status, xhr.response);
        if (xhr.status === 401) this.onUnauthorized(error);
        reject(error);
      });
      xhr.addEventListener("error", () => reject(new Error("the upload did not reach the API (connection lost)")));
      xhr.addEventListener("abort", () => reject(new DOMException("upload cancelled", "AbortError")));
      signal?.addEventListener("abort", () => xhr.abort());
      xhr.send(form);
    });
  }

  /** An object URL of the image at `path`, fetched once per page view. */
  imageUrl(path) {
    if (!this.images.has(path)) {
      const url = this.request(path).then(async (response) => URL.createObjectURL(await response.blob()));
      url.catch(() => this.images.delete(path));
      this.images.set(path, url);
    }
    return this.images.get(path);
  }

  /** Forget the images of the previous view, freeing their memory. */
  releaseImages() {
    for (const url of this.images.values()) url.then(URL.revokeObjectURL, () => {});
    this.images.clear();
  }

  /** Save the file at `path` through the browser's download, named as the server says. */
  async download(path, fallbackName) {
    const response = await this.request(path);
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] || fallbackName;
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  /**
   * Follow a job's Server-Sent Events: replay after `after` (sent as Last-Event-ID), then live; calls
   * `onEvent` with each event and resolves when the server ends the stream (the job has finished).
   */
  async streamEvents(jobId, { after, onEvent, signal }) {
    const headers = { Accept: "text/event-stream" };
    if (after) headers["Last-Event-ID"] = String(after);
    const response = await this.request(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser(onEvent);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.feed(value);
    }
  }
}

/** The event-stream format: `field: value` lines, a blank line ends a message, `:` starts a comment. */
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.data = [];
  }

  feed(text) {
    this.buffer += text;
    let end;
    while ((end = this.buffer.search(/\r\n|\n|\r/)) >= 0) {
      if (end === this.buffer.length - 1 && this.buffer[end] === "\r") return; // maybe half of \r\n
      const line = this.buffer.slice(0, end);
      const newline = this.buffer.startsWith("\r\n", end) ? 2 : 1;
      this.buffer = this.buffer.slice(end + newline);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent(JSON.parse(this.data.join("\n")));
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // keepalive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field === "data") this.data.push(line.slice(colon + 1).replace(/^ /, ""));
    // `id` and `event` repeat what the JSON payload carries (its id and type).
  }
}
