// A line chart drawn as SVG: one or more metric series against the optimizer step, with axes, a legend
// that shows the newest value (or the value under the pointer), and markers while there are few points.

import { clear, formatNumber, h } from "./dom.js";

const WIDTH = 480;
const HEIGHT = 210;
const PAD = { left: 56, right: 14, top: 12, bottom: 30 };
const MARKERS_UP_TO = 60;
const COLORS = ["#2563eb", "#dc2626", "#0d9488", "#9333ea"];

export class LineChart {
  /**
   * @param {{id: string, title: string, lines: {metric: string, label: string, dashed?: boolean}[],
   *          yRange?: [number, number]}} spec
   */
  constructor(spec) {
    this.spec = spec;
    this.series = new Map();
    this.hoverStep = null;
    this.emptyText = "no data yet";
    this.svg = h("svg", {
      xmlns: "http://www.w3.org/2000/svg",
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "chart-svg",
      "data-chart": spec.id,
      role: "img",
      "aria-label": spec.title,
    });
    this.legend = h("div", { class: "legend" });
    this.el = h("figure", { class: "chart card" }, h("figcaption", {}, spec.title), this.svg, this.legend);
    this.svg.addEventListener("mousemove", (event) => this.hover(event));
    this.svg.addEventListener("mouseleave", () => this.hover(null));
  }

  /** Redraw from `series`: metric name → Map(step → value). */
  update(series) {
    this.series = series;
    this.render();
  }

  lines() {
    return this.spec.lines
      .map((line, i) => {
        const values = this.series.get(line.metric);
        const points = values ? [...values.entries()].sort((a, b) => a[0] - b[0]) : [];
        return { ...line, color: COLORS[i % COLORS.length], points };
      })
      .filter((line) => line.points.length);
  }

  render() {
    clear(this.svg);
    clear(this.legend);
    const lines = this.lines();
    this.el.classList.toggle("empty", !lines.length);
    if (!lines.length) {
      this.svg.append(h("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "chart-empty" }, this.emptyText));
      return;
    }
    const all = lines.flatMap((line) => line.points);
    const x = scale(domain(all.map((p) => p[0]), 0), [PAD.left, WIDTH - PAD.right]);
    const y = scale(this.spec.yRange || domain(all.map((p) => p[1]), 0.08), [HEIGHT - PAD.bottom, PAD.top]);
    this.svg.append(axes(x, y));
    for (const line of lines) this.svg.append(path(line, x, y));
    if (this.hoverStep !== null) this.svg.append(crosshair(x(this.hoverStep)));
    this.scaleX = x;
    for (const line of lines) this.legend.append(legendItem(line, this.hoverStep));
  }

  hover(event) {
    if (!event || !this.scaleX) {
      this.hoverStep = null;
    } else {
      const box = this.svg.getBoundingClientRect();
      const step = this.scaleX.invert(((event.clientX - box.left) / box.width) * WIDTH);
      const steps = this.lines().flatMap((line) => line.points.map((p) => p[0]));
      this.hoverStep = steps.reduce((best, s) => (Math.abs(s - step) < Math.abs(best - step) ? s : best));
    }
    this.render();
  }
}

function domain(values, pad) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    const spread = Math.abs(lo) * 0.1 || 1;
    return [lo - spread, hi + spread];
  }
  const margin = (hi - lo) * pad;
  return [lo - margin, hi + margin];
}

function scale([d0, d1], [r0, r1]) {
  const f = (v) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0);
  f.invert = (r) => d0 + ((r - r0) / (r1 - r0)) * (d1 - d0);
  f.domain = [d0, d1];
  return f;
}

/** About `count` round tick values (1, 2 or 5 × 10^k apart) inside [lo, hi]. */
function ticks([lo, hi], count, integer = false) {
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || power * 10;
  if (integer) step = Math.max(1, Math.round(step));
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

/** One format for every label of an axis: exponents when the values are tiny or huge, else fixed. */
function tickFormat(values) {
  const largest = Math.max(...values.map(Math.abs));
  if (largest !== 0 && (largest < 1e-2 || largest >= 1e5)) return (v) => (v === 0 ? "0" : v.toExponential(2));
  const spacing = values.length > 1 ? Math.abs(values[1] - values[0]) : largest || 1;
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(spacing) + 1e-9)));
  return (v) => v.toFixed(decimals);
}

function axes(x, y) {
  const group = h("g", { class: "axes" });
  const values = ticks(y.domain, 5);
  const format = tickFormat(values);
  for (const value of values) {
    const py = y(value);
    group.append(
      h("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: py, y2: py, class: "grid" }),
      h("text", { x: PAD.left - 6, y: py + 4, class: "tick tick-y" }, format(value)),
    );
  }
  for (const value of ticks(x.domain, 6, true)) {
    group.append(h("text", { x: x(value), y: HEIGHT - PAD.bottom + 16, class: "tick tick-x" }, value));
  }
  group.append(
    h("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom, class: "axis" }),
    h("text", { x: WIDTH - PAD.right, y: HEIGHT - 2, class: "axis-label" }, "step"),
  );
  return group;
}

function path(line, x, y) {
  const group = h("g", { class: "line" });
  const points = line.points.map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  group.append(
    h("polyline", {
      points,
      class: "series",
      stroke: line.color,
      "stroke-dasharray": line.dashed ? "5 4" : null,
      "data-metric": line.metric,
      "data-points": line.points.length,
    }),
  );
  if (line.points.length <= MARKERS_UP_TO) {
    for (const [s, v] of line.points) {
      group.append(h("circle", { cx: x(s).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: line.color }));
    }
  }
  return group;
}

function crosshair(px) {
  return h("line", { x1: px, x2: px, y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "crosshair" });
}

function legendItem(line, step) {
  const point = step === null ? line.points.at(-1) : line.points.find((p) => p[0] === step);
  const swatch = h("span", { class: `swatch${line.dashed ? " dashed" : ""}` });
  swatch.style.borderColor = line.color;
  return h(
    "span",
    { class: "legend-item" },
    swatch,
    line.label,
    " ",
    h("b", {}, point ? formatNumber(point[1]) : "–"),
    point ? h("span", { class: "muted" }, ` @ ${point[0]}`) : null,
  );
}
