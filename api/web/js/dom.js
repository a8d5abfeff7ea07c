// Small DOM and formatting helpers. Text always goes in as text nodes, never as HTML: prompts, names and
// messages come from users.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElementNS(
    attrs.xmlns || (SVG_TAGS.has(tag) ? SVG_NS : "http://www.w3.org/1999/xhtml"),
    tag,
  );
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false || key === "xmlns") continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["svg", "g", "line", "polyline", "path", "circle", "text", "rect", "title"]);

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export function statusPill(status) {
  return h("span", { class: `pill pill-${status}`, "data-status": status }, status);
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const total = Math.round(seconds);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = total % 60;
  if (hours) return `${hours}h${String(minutes).padStart(2, "0")}m`;
  return minutes ? `${minutes}m${String(secs).padStart(2, "0")}s` : `${secs}s`;
}

// The API's times are UTC; one without an offset (SQLite drops it) must not be read as local time.
export function parseTime(iso) {
  if (!iso) return null;
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
}

export function formatTime(iso) {
  const date = parseTime(iso);
  if (!date) return "–";
  return date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function formatClock(iso) {
  const date = parseTime(iso);
  return date ? date.toLocaleTimeString(undefined, { hour12: false }) : "–";
}

export function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(4)).toString();
}

export function progressBar(step, total) {
  const fraction = total ? Math.min(1, step / total) : 0;
  const fill = h("div", { class: "progress-fill" });
  // Set through the CSSOM rather than a style attribute, which a strict Content-Security-Policy blocks.
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": step },
    fill,
  );
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
