// The new-job form: a dataset, a base model and method, the hyperparameters people change most, and the
// validation prompts. A field left empty is not sent, so it takes the API's default (the MaPO reference
// recipe), shown as its placeholder; the defaults are read from the API's own OpenAPI schema, so they
// cannot drift from TrainSpec. Steps, learning rate and batch size start filled with a short run when every
// online worker is a CPU ("Defaults for"). A refusal (422) marks the field the API names.

import { append, clear, h } from "./dom.js";

const METHODS = {
  mapo: ["MaPO", "margin-aware, reference-free: the chosen image's error down, the rejected one's up"],
  dpo: ["Diffusion-DPO", "against a frozen reference, the base model, which adds a denoiser pass per image"],
  sft: ["SFT", "the denoising loss on the chosen images only"],
};

// Each number field: the `param` the API names it by in a body and in its errors, and for which methods
// it applies (a hidden field is not sent).
const NUMBER_FIELDS = [
  { id: "job-steps", param: "hyperparameters.max_train_steps", label: "Steps", integer: true, hint: "optimizer steps in all" },
  { id: "job-lr", param: "hyperparameters.learning_rate", label: "Learning rate", hint: "peak, AdamW" },
  {
    id: "job-batch", param: "hyperparameters.train_batch_size", label: "Batch size", integer: true,
    hint: "pairs per micro-step (the effective batch also counts gradient accumulation)",
  },
  { id: "job-resolution", param: "hyperparameters.resolution", label: "Resolution", integer: true, hint: "square, pixels, a multiple of 8" },
  { id: "job-beta", param: "hyperparameters.beta", label: "β (margin weight)", methods: ["mapo"], hint: "weight of MaPO's preference term" },
  {
    id: "job-margin-scale", param: "hyperparameters.margin_scale", label: "Margin scale T", methods: ["mapo"],
    hint: "scale of the margin in the log-sigmoid", familyDefault: true,
  },
  { id: "job-beta-dpo", param: "hyperparameters.beta_dpo", label: "β (KL strength)", methods: ["dpo"], hint: "Diffusion-DPO's beta", familyDefault: true },
  { id: "job-seed", param: "seed", label: "Seed", integer: true, hint: "data order, noise and LoRA init" },
];
const VALIDATION_FIELDS = [
  { id: "job-every", param: "validation.every_n_steps", label: "Render every N steps", integer: true, hint: "empty: only at the end" },
  { id: "job-inference-steps", param: "validation.num_inference_steps", label: "Denoising steps per image", integer: true },
];
const EXTRA_PARAM = "hyperparameters"; // the JSON box: any other TrainSpec field
// What the number fields start from, per device. Left empty they take the API's defaults, the reference
// recipe for a GPU (2,000 steps at learning rate 1e-5), which keeps a CPU busy for hours; the CPU's are
// the quickstart's short run, minutes on the shipped shapes-* models.
const DEVICE_DEFAULTS = {
  cuda: { label: "GPU: the reference recipe", values: {} },
  cpu: { label: "CPU: a short run (60 steps at 1e-3, batch 4)", values: { "job-steps": 60, "job-lr": 1e-3, "job-batch": 4 } },
};

export async function newJobPage({ root, api, signal }, datasetId) {
  const [datasets, models, defaults, workers] = await Promise.all([
    readyDatasets(api, signal, datasetId),
    api.json("/v1/base-models", { signal }),
    specDefaults(signal),
    api.json("/v1/workers?status=online", { signal }),
  ]);
  root.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / new"),
    h("div", { class: "page-head" }, h("h1", {}, "New job")),
  );
  if (!datasets.length || !models.data.length) {
    root.append(h("div", { class: "card empty-state" }, !datasets.length
      ? h("p", {}, "No ready dataset yet: ", h("a", { href: "#/datasets" }, "upload one"), " first.")
      : h("p", {}, "This server offers no base model (the operator sets them in MAPO_BASE_MODELS).")));
    return;
  }
  const form = new JobForm({ api, datasets, models: models.data, defaults, workers: workers.data });
  form.preselect(datasetId);
  root.append(form.el);
}

/** Every ready dataset of the tenant (newest first), and the one asked for even if it is not ready. */
async function readyDatasets(api, signal, wanted) {
  const found = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({ limit: 200 });
    if (after) query.set("after", after);
    const page = await api.json(`/v1/datasets?${query}`, { signal });
    found.push(...page.data);
    if (!page.has_more) break;
    after = page.data.at(-1).id;
  }
  return found.filter((d) => d.status === "ready" || d.id === wanted);
}

/** Defaults of the job body's fields by param, from /openapi.json; empty if it cannot be read. */
async function specDefaults(signal) {
  try {
    const response = await fetch("/openapi.json", { signal });
    const schemas = (await response.json()).components.schemas;
    const defaults = new Map();
    for (const [prefix, schema] of [["hyperparameters.", "Hyperparameters"], ["validation.", "ValidationSpec"], ["", "JobCreate"]]) {
      for (const [name, field] of Object.entries(schemas[schema]?.properties ?? {})) {
        defaults.set(prefix + name, field);
      }
    }
    return defaults;
  } catch (err) {
    if (err.name === "AbortError") throw err;
    return new Map(); // the form still works; its placeholders just say "default"
  }
}

/** The device whose defaults the form starts from: the CPU's when every online worker trains on one. */
function likelyDevice(workers) {
  return workers.length && workers.every((w) => w.device === "cpu") ? "cpu" : "cuda";
}

function workersHint(workers) {
  if (!workers.length) return "No worker is online: the job waits for one.";
  const cpus = workers.filter((w) => w.device === "cpu").length;
  const gpus = workers.length - cpus;
  return `Online workers: ${[gpus && `${gpus} on a GPU`, cpus && `${cpus} on a CPU`].filter(Boolean).join(", ")}.`;
}

class JobForm {
  constructor({ api, datasets, models, defaults, workers }) {
    Object.assign(this, { api, models, defaults });
    this.fields = new Map(); // param → { input, error, spec }
    this.dataset = this.choice("job-dataset", "dataset_id", "Dataset",
      datasets.map((d) => [d.id, `${d.name} · ${d.num_pairs} pairs · ${d.kind ?? "unreadable"} · ${d.id}`]));
    this.model = this.choice("job-base-model", "base_model", "Base model",
      models.map((m) => [m.name, `${m.name} (${m.family ?? "family unknown"}${m.native_resolution ? `, ${m.native_resolution}px` : ""})`]));
    this.method = this.choice("job-method", "method", "Method", [], " ");
    this.modelHint = h("p", { class: "hint", id: "job-base-model-hint" });
    this.device = this.choice("job-device", "device", "Defaults for",
      Object.entries(DEVICE_DEFAULTS).map(([value, { label }]) => [value, label]), workersHint(workers));
    this.numbers = NUMBER_FIELDS.map((spec) => this.number(spec));
    this.prompts = this.textarea("job-prompts", "validation.prompts", "Validation prompts",
      "one per line; each is rendered with and without the LoRA", 4);
    this.validation = VALIDATION_FIELDS.map((spec) => this.number(spec));
    this.extra = this.textarea("job-extra", EXTRA_PARAM, "Other hyperparameters (JSON)", "", 3);
    this.extra.input.placeholder = '{"lora_rank": 16, "mixed_precision": "no"}';
    this.error = h("p", { class: "form-error", id: "job-form-error", role: "alert" });
    this.submit = h("button", { type: "submit", class: "primary" }, "Create job");
    this.el = h("form", { id: "job-form", class: "card job-form" },
      h("div", { class: "form-grid" }, this.dataset.wrap, this.model.wrap, this.method.wrap),
      this.modelHint,
      h("h2", {}, "Hyperparameters"),
      h("p", { class: "muted" }, "Empty fields take the default shown in them."),
      h("div", { class: "form-grid" }, this.device.wrap, this.numbers.map((f) => f.wrap)),
      h("h2", {}, "Validation images"),
      h("div", { class: "form-grid" }, this.prompts.wrap, this.validation.map((f) => f.wrap)),
      h("details", { class: "extra" }, h("summary", {}, "More hyperparameters"),
        h("div", { class: "form-grid" }, this.extra.wrap)),
      this.error,
      h("div", { class: "actions" }, this.submit));
    this.model.input.addEventListener("change", () => this.modelChanged());
    this.method.input.addEventListener("change", () => this.methodChanged());
    this.device.input.addEventListener("change", () => this.deviceChanged());
    this.device.input.value = likelyDevice(workers);
    this.deviceChanged();
    this.el.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.modelChanged();
  }

  preselect(datasetId) {
    if ([...this.dataset.input.options].some((o) => o.value === datasetId)) this.dataset.input.value = datasetId;
  }

  // Fields

  field(param, label, input, hint) {
    const id = input.id;
    const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
    const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
    input.setAttribute("aria-describedby", [hintEl && `${id}-hint`, `${id}-error`].filter(Boolean).join(" "));
    input.dataset.param = param;
    const wrap = h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl, error);
    const entry = { param, input, error, wrap, hint: hintEl };
    this.fields.set(param, entry);
    return entry;
  }

  choice(id, param, label, options, hint) {
    const input = h("select", { id, name: param });
    setOptions(input, options);
    return this.field(param, label, input, hint);
  }

  number(spec) {
    const schema = this.defaults.get(spec.param);
    const input = h("input", {
      type: "number", id: spec.id, name: spec.param, inputmode: spec.integer ? "numeric" : "decimal",
      step: spec.integer ? 1 : "any", title: schema?.description,
    });
    const entry = this.field(spec.param, spec.label, input, spec.hint);
    entry.spec = spec;
    // The per-family defaults are in the field's description (its title), not in the schema's default.
    input.placeholder = spec.familyDefault ? "the family's default" : placeholder(schema);
    return entry;
  }

  textarea(id, param, label, hint, rows) {
    const input = h("textarea", { id, name: param, rows, spellcheck: param === EXTRA_PARAM ? "false" : null });
    return this.field(param, label, input, hint);
  }

  modelChanged() {
    const model = this.models.find((m) => m.name === this.model.input.value);
    const previous = this.method.input.value || "mapo";
    setOptions(this.method.input, model.methods.map((m) => [m, METHODS[m]?.[0] ?? m]));
    this.method.input.value = model.methods.includes(previous) ? previous : model.methods[0];
    this.fields.get("hyperparameters.resolution").input.placeholder = model.native_resolution
      ? `${model.native_resolution} (native)` : "native";
    // dom.js's append, not Element.append: it flattens the nested list (Element.append would print it
    // as "[object HTMLElement]").
    append(clear(this.modelHint), model.fields.length
      ? ["Besides the fields here, it takes ", model.fields.map((f, i) => [i ? ", " : "", h("code", {}, f)]),
        " (set them under More hyperparameters)."]
      : [`${model.name} takes no family-specific fields.`]);
    this.methodChanged();
  }

  /** Fill the number fields with the chosen device's starting values (empty: the API's defaults). */
  deviceChanged() {
    const { values } = DEVICE_DEFAULTS[this.device.input.value];
    for (const id of new Set(Object.values(DEVICE_DEFAULTS).flatMap((d) => Object.keys(d.values)))) {
      this.numbers.find((f) => f.input.id === id).input.value = values[id] ?? "";
    }
  }

  methodChanged() {
    const method = this.method.input.value;
    this.method.hint.textContent = METHODS[method]?.[1] ?? "";
    for (const { spec, wrap } of this.numbers) wrap.hidden = Boolean(spec.methods && !spec.methods.includes(method));
  }

  // The body

  body() {
    const hyperparameters = this.extraHyperparameters();
    const body = { dataset_id: this.dataset.input.value, base_model: this.model.input.value, method: this.method.input.value };
    for (const { spec, input, wrap } of this.numbers) {
      if (wrap.hidden || input.value === "") continue;
      const [head, name] = spec.param.split(".");
      if (name) hyperparameters[name] = input.valueAsNumber;
      else body[head] = input.valueAsNumber;
    }
    const validation = {};
    const prompts = this.prompts.input.value.split("\n").map((p) => p.trim()).filter(Boolean);
    if (prompts.length) validation.prompts = prompts;
    for (const { spec, input } of this.validation) {
      if (input.value !== "") validation[spec.param.split(".")[1]] = input.valueAsNumber;
    }
    if (Object.keys(hyperparameters).length) body.hyperparameters = hyperparameters;
    if (Object.keys(validation).length) body.validation = validation;
    return body;
  }

  /** The JSON box's object; the form's own fields are added over it. */
  extraHyperparameters() {
    const text = this.extra.input.value.trim();
    if (!text) return {};
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new FieldError(EXTRA_PARAM, `not valid JSON: ${err.message}`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new FieldError(EXTRA_PARAM, 'must be a JSON object, such as {"lora_rank": 16}');
    }
    return value;
  }

  async send() {
    this.clearErrors();
    this.submit.disabled = true;
    this.submit.textContent = "Creating…";
    try {
      const job = await this.api.post("/v1/jobs", this.body());
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      this.showErrors(err);
      this.submit.disabled = false;
      this.submit.textContent = "Create job";
    }
  }

  // Errors

  clearErrors() {
    this.error.textContent = "";
    for (const { input, error } of this.fields.values()) {
      input.removeAttribute("aria-invalid");
      error.hidden = true;
      error.textContent = "";
    }
  }

  showErrors(err) {
    if (err.name === "AbortError") return;
    const param = err.param;
    this.error.textContent = param && !err.message.startsWith(param) ? `${param}: ${err.message}` : err.message;
    // A body the schema refuses lists every field (details); a refusal by the service names one (param).
    const marks = err.details?.length ? err.details : param ? [{ param, message: err.message }] : [];
    let first = null;
    for (const mark of marks) {
      const entry = this.fieldOf(mark.param);
      if (!entry) continue;
      // pydantic starts the message of a check written in code with "Value error, ": noise beside a field.
      const text = mark.message.replace(/^Value error, /, "");
      entry.input.setAttribute("aria-invalid", "true");
      entry.error.hidden = false;
      entry.error.textContent = entry.error.textContent ? `${entry.error.textContent}; ${text}` : text;
      first ??= entry;
    }
    if (first) {
      first.wrap.closest("details")?.setAttribute("open", "");
      first.input.focus();
    }
  }

  /** The field a param names: the field itself, the one it is inside of (validation.prompts.2), or, for
   * a hyperparameter the form has no field for, the JSON box. */
  fieldOf(param) {
    if (!param) return null;
    const parts = param.split(".");
    for (let n = parts.length; n > 0; n -= 1) {
      const entry = this.fields.get(parts.slice(0, n).join("."));
      if (entry) return entry;
    }
    return null;
  }
}

class FieldError extends Error {
  constructor(param, message) {
    super(message);
    this.param = param;
    this.details = [{ param, message }];
  }
}

function setOptions(select, options) {
  clear(select).append(...options.map(([value, label]) => h("option", { value }, label)));
}

function placeholder(schema) {
  const value = schema?.default;
  return value === undefined || value === null ? "default" : String(value);
}
