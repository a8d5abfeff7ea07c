// One job: status, progress and ETA, live curves, validation images beside the base model's,
// checkpoints, the error of a failed job, cancel and downloads. It first draws what the API has stored
// (so a reload, or a finished job, shows everything), then follows the event stream for what comes next.

import { LineChart } from "./chart.js";
import {
  FINISHED, clear, formatClock, formatNumber, formatSeconds, formatTime, h, parseTime, progressBar, sleep,
  statusPill,
} from "./dom.js";

const CHARTS = [
  { id: "loss", title: "Training loss", lines: [{ metric: "loss", label: "loss" }] },
  {
    id: "errors",
    title: "Denoising error: chosen vs rejected",
    lines: [
      { metric: "chosen_loss", label: "chosen" },
      { metric: "rejected_loss", label: "rejected" },
      { metric: "heldout_chosen_loss", label: "held-out chosen", dashed: true },
      { metric: "heldout_rejected_loss", label: "held-out rejected", dashed: true },
    ],
  },
  {
    id: "margin",
    title: "Preference margin",
    lines: [
      { metric: "margin", label: "MaPO margin" },
      { metric: "implicit_reward_margin", label: "DPO reward margin" },
    ],
  },
  {
    id: "accuracy",
    title: "Preference accuracy",
    yRange: [0, 1],
    lines: [
      { metric: "heldout_accuracy", label: "held-out pairs" },
      { metric: "accuracy", label: "training batch" },
    ],
  },
  { id: "lr", title: "Learning rate", lines: [{ metric: "lr", label: "lr" }] },
];
const LOG_LIMIT = 300;
const JOB_REFRESH_MS = 2000;
// About one point per unit of a chart's width: the API thins longer series (`?max_points=`), so a
// 100,000-step job's curves cost what a short one's do.
const CURVE_POINTS = 480;

export async function jobPage({ root, api, signal, showError }, jobId) {
  const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const [job, metrics, samples, checkpoints, models] = await Promise.all([
    api.json(base, { signal }),
    api.json(`${base}/metrics?max_points=${CURVE_POINTS}`, { signal }),
    api.json(`${base}/samples`, { signal }),
    api.json(`${base}/checkpoints`, { signal }),
    api.json("/v1/base-models", { signal }),
  ]);
  const family = models.data.find((m) => m.name === job.base_model)?.family ?? "family unknown";
  const page = new JobView({ root, api, signal, showError, base, job, family });
  page.addSeries(metrics.series);
  page.showSamples(samples.data);
  page.showCheckpoints(checkpoints.data);
  page.follow();
}

class JobView {
  constructor({ root, api, signal, showError, base, job, family }) {
    Object.assign(this, { root, api, signal, showError, base, job, family });
    this.series = new Map();
    this.fetchedUntil = new Map(); // metric name → the last step of its fetched (thinned) curve
    this.lastEventId = 0;
    this.head = h("div", { class: "page-head" });
    this.summary = h("div", { class: "card summary", id: "summary" });
    this.errorBox = h("div", { class: "card error-box", id: "job-error", hidden: true });
    this.charts = CHARTS.map((spec) => new LineChart(spec));
    this.samples = h("div", { id: "samples" });
    this.checkpoints = h("div", { id: "checkpoints" });
    this.log = h("ol", { class: "log", id: "log" });
    this.refreshJob = coalesce(() => this.reloadJob(), JOB_REFRESH_MS, signal);
    this.refreshSamples = coalesce(async () => this.showSamples((await this.get("/samples")).data), 500, signal);
    this.refreshCheckpoints = coalesce(
      async () => this.showCheckpoints((await this.get("/checkpoints")).data), 500, signal,
    );
    root.append(
      h("nav", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", h("span", { class: "mono" }, job.id)),
      this.head,
      this.errorBox,
      this.summary,
      h("section", {}, h("h2", {}, "Curves"), h("div", { class: "charts" }, this.charts.map((c) => c.el))),
      h("section", {}, h("h2", {}, "Validation images"), this.samples),
      h("section", {}, h("h2", {}, "Checkpoints"), this.checkpoints),
      h("section", {},
        h("details", {}, h("summary", {}, "Hyperparameters and settings"),
          h("pre", { class: "card" }, JSON.stringify(
            { hyperparameters: job.hyperparameters, validation: job.validation, metadata: job.metadata, seed: job.seed },
            null, 2,
          )))),
      h("section", {}, h("h2", {}, "Event log"), h("div", { class: "card flush log-wrap" }, this.log)),
    );
    this.showJob();
    this.drawCharts();
  }

  get(path) {
    return this.api.json(`${this.base}${path}`, { signal: this.signal });
  }

  async reloadJob() {
    this.job = await this.get("");
    this.showJob();
  }

  // Header, summary and error

  showJob() {
    const job = this.job;
    for (const chart of this.charts) chart.emptyText = FINISHED.has(job.status) ? "no data" : "no data yet";
    clear(this.head).append(
      h("h1", {}, h("span", { class: "mono" }, job.id), " ", statusPill(job.status)),
      h("div", { class: "actions" }, this.actions()),
    );
    const { step, total_steps: total, eta_seconds: eta } = job.progress;
    const started = parseTime(job.started_at);
    const finished = parseTime(job.finished_at);
    const timing = FINISHED.has(job.status)
      ? ["Took", started && finished ? formatSeconds((finished - started) / 1000) : "–"]
      : ["ETA", job.status === "running" ? formatSeconds(eta) : "–"];
    clear(this.summary).append(
      h("div", { class: `progress-row status-${job.status}` }, progressBar(step, total),
        h("span", { class: "mono", id: "step" }, `step ${step} / ${total}`),
        h("span", { class: "mono", id: "eta" }, `${timing[0]} ${timing[1]}`)),
      h("dl", { class: "facts" }, [
        ["Method", job.method],
        ["Base model", `${job.base_model} (${this.family})`],
        ["Dataset", job.dataset_id ? h("a", { href: `#/datasets/${job.dataset_id}`, class: "mono" }, job.dataset_id) : "deleted"],
        ["Loss", formatNumber(job.latest_metrics.loss)],
        ["Created", formatTime(job.created_at)],
        ["Started", formatTime(job.started_at)],
        ["Finished", formatTime(job.finished_at)],
        ["Attempts", job.attempts],
      ].map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value)))),
    );
    this.errorBox.hidden = !job.error;
    if (job.error) {
      clear(this.errorBox).append(
        h("h2", {}, "Job failed: ", h("code", {}, job.error.code)),
        h("p", { class: "error-message" }, job.error.message),
      );
    }
  }

  showJobSoon() {
    if (this.jobPending) return;
    this.jobPending = true;
    requestAnimationFrame(() => {
      this.jobPending = false;
      this.showJob();
    });
  }

  actions() {
    const job = this.job;
    const buttons = [];
    if (["queued", "running"].includes(job.status)) {
      const cancel = h("button", { type: "button", class: "danger", id: "cancel" }, "Cancel job");
      cancel.addEventListener("click", async () => {
        if (!cancel.classList.contains("confirm")) {
          cancel.classList.add("confirm");
          cancel.textContent = "Click again to cancel";
          return;
        }
        cancel.disabled = true;
        try {
          this.job = await this.api.post(`${this.base}/cancel`);
          this.showJob();
        } catch (err) {
          this.showError(err);
        }
      });
      buttons.push(cancel);
    }
    if (job.status === "succeeded") {
      for (const [format, label] of [["diffusers", "Download LoRA (diffusers)"], ["kohya", "kohya / ComfyUI"]]) {
        const button = h("button", { type: "button", class: format === "diffusers" ? "primary" : "", "data-download": format }, label);
        button.addEventListener("click", () =>
          this.api.download(`${this.base}/adapter?format=${format}`, `${job.id}_${format}.safetensors`).catch(this.showError));
        buttons.push(button);
      }
    }
    return buttons;
  }

  // Curves

  addSeries(series) {
    for (const [name, { steps, values }] of Object.entries(series)) {
      const points = this.points(name);
      steps.forEach((step, i) => points.set(step, values[i]));
      if (steps.length) this.fetchedUntil.set(name, steps.at(-1));
    }
    this.drawCharts();
  }

  // Points of step and evaluation events. The replayed log's steps are in the fetched curves already,
  // thinned on purpose, so a curve only takes steps after its fetched end: else a long job's replay
  // would put every one of its steps back (a run resumed below that step while the page is open shows
  // its new values there on reload).
  addEventPoints(step, metrics) {
    const later = Object.entries(metrics).filter(([name]) => step > (this.fetchedUntil.get(name) ?? -Infinity));
    this.addPoints(step, Object.fromEntries(later));
  }

  addPoints(step, metrics) {
    for (const [name, value] of Object.entries(metrics)) this.points(name).set(step, value);
    this.drawCharts();
  }

  points(name) {
    if (!this.series.has(name)) this.series.set(name, new Map());
    return this.series.get(name);
  }

  drawCharts() {
    // Replayed events arrive in bursts; draw once per frame.
    if (this.drawPending) return;
    this.drawPending = true;
    requestAnimationFrame(() => {
      this.drawPending = false;
      for (const chart of this.charts) chart.update(this.series);
    });
  }

  // Samples and checkpoints

  showSamples(samples) {
    const root = clear(this.samples);
    if (!samples.length) {
      const prompts = this.job.validation?.prompts || [];
      root.append(h("p", { class: "muted" }, prompts.length
        ? "No images yet: they are rendered before training starts (the base model) and at each validation step."
        : "This job has no validation prompts (set validation.prompts to see images here)."));
      return;
    }
    const steps = [...new Set(samples.filter((s) => s.with_lora).map((s) => s.step))].sort((a, b) => a - b);
    const byPrompt = new Map();
    for (const sample of samples) {
      if (!byPrompt.has(sample.index)) byPrompt.set(sample.index, { prompt: sample.prompt, base: null, lora: new Map() });
      const row = byPrompt.get(sample.index);
      if (sample.with_lora) row.lora.set(sample.step, sample);
      else row.base = sample;
    }
    const head = h("tr", {}, h("th", {}, "Prompt"), h("th", {}, "Base model"),
      steps.map((step) => h("th", {}, `Step ${step}`)));
    const rows = [...byPrompt.entries()].sort((a, b) => a[0] - b[0]).map(([, row]) =>
      h("tr", {}, h("td", { class: "prompt" }, row.prompt), h("td", {}, this.image(row.base)),
        steps.map((step) => h("td", {}, this.image(row.lora.get(step))))));
    root.append(h("div", { class: "card flush scroll-x" }, h("table", { class: "samples" }, h("thead", {}, head), h("tbody", {}, rows))));
  }

  // Each image carries its own label (when, then the prompt): the prompt column scrolls out of sight on
  // a job with many validation steps, and an image opened or saved alone still says what it shows.
  image(sample) {
    if (!sample) return h("span", { class: "muted" }, "–");
    const when = sample.with_lora ? `step ${sample.step}` : "base model";
    const label = `${when}: ${sample.prompt}`;
    const img = h("img", { alt: label, class: "thumb", "data-sample": sample.id });
    const link = h("a", { target: "_blank", rel: "noopener" }, img);
    this.api.imageUrl(sample.url).then((url) => {
      img.src = url;
      link.href = url;
    }, this.showError);
    return h("figure", { class: "sample", title: label },
      link, h("figcaption", {}, h("span", { class: "sample-when" }, when), " ",
        h("span", { class: "sample-prompt" }, sample.prompt)));
  }

  showCheckpoints(checkpoints) {
    const root = clear(this.checkpoints);
    if (!checkpoints.length) {
      root.append(h("p", { class: "muted" }, "None kept yet (one is saved every checkpoint_every_n_steps)."));
      return;
    }
    root.append(h("div", { class: "card flush" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Loss"), h("th", {}, "Saved"))),
      h("tbody", {}, checkpoints.map((c) => h("tr", {}, h("td", { class: "mono" }, c.step),
        h("td", { class: "mono" }, formatNumber(c.metrics.loss)), h("td", {}, formatTime(c.created_at))))))));
  }

  // Events

  async follow() {
    this.root.dataset.stream = "open";
    let failures = 0;
    while (!this.signal.aborted) {
      try {
        await this.api.streamEvents(this.job.id, {
          after: this.lastEventId,
          signal: this.signal,
          onEvent: (event) => this.onEvent(event),
        });
        failures = 0;
      } catch (err) {
        if (this.signal.aborted) return;
        failures += 1;
        if (err.status && err.status !== 503) return this.showError(err);
      }
      await this.reloadJob().catch(() => {});
      if (FINISHED.has(this.job.status)) {
        // The server closes the stream after a finished job's last event: show the outputs as they ended.
        await Promise.all([this.refreshSamples(), this.refreshCheckpoints()]).catch(this.showError);
        this.root.dataset.stream = "ended";
        return;
      }
      await sleep(Math.min(1000 * 2 ** failures, 15000), this.signal);
    }
  }

  onEvent(event) {
    if (event.id <= this.lastEventId) return;
    this.lastEventId = event.id;
    this.appendLog(event);
    const data = event.data || {};
    if (event.type === "step") {
      // Replayed steps must not wind the bar back; a resumed run's lower step comes from the reload.
      if (data.step > this.job.progress.step) {
        this.job.progress.step = data.step;
        this.job.progress.total_steps = data.total_steps;
        Object.assign(this.job.latest_metrics, data.metrics);
      }
      this.addEventPoints(data.step, data.metrics);
      this.showJobSoon();
      if (!FINISHED.has(this.job.status)) this.refreshJob();
    } else if (event.type === "evaluation") {
      this.addEventPoints(data.step, data.metrics);
    } else if (event.type === "sample") {
      this.refreshSamples();
    } else if (event.type === "checkpoint") {
      this.refreshCheckpoints();
    } else {
      this.refreshJob();
    }
  }

  appendLog(event) {
    const atBottom = this.log.parentElement.scrollHeight - this.log.parentElement.scrollTop
      <= this.log.parentElement.clientHeight + 8;
    this.log.append(h("li", { class: `level-${event.level}`, "data-event": event.id },
      h("span", { class: "log-id mono" }, event.id),
      h("time", { class: "mono", datetime: event.created_at, title: formatTime(event.created_at) },
        formatClock(event.created_at)),
      h("span", { class: "log-type" }, event.type),
      h("span", { class: "log-message" }, event.message)));
    while (this.log.childElementCount > LOG_LIMIT) this.log.firstElementChild.remove();
    if (atBottom) this.log.parentElement.scrollTop = this.log.parentElement.scrollHeight;
  }
}

/**
 * `fn` run at most once per `ms`: a call while it runs or waits is remembered and run once afterwards.
 * Returns a function whose promise settles when the run it joined is done.
 */
function coalesce(fn, ms, signal) {
  let running = null;
  let again = false;
  return function call() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await fn().catch((err) => err.name !== "AbortError" && console.warn(err));
        if (again) await sleep(ms, signal);
      } while (again && !signal.aborted);
      running = null;
    })();
    return running;
  };
}
