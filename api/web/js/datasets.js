// Datasets: the upload form and the list, and one dataset's pairs (prompt, chosen beside rejected), a
// page at a time.

import { clear, formatBytes, formatTime, h } from "./dom.js";

const PAGE = 24;
// What POST /v1/datasets takes (README, Datasets); `accept` only filters the file picker.
const FORMATS = ".zip,.tar,.gz,.tgz,.parquet";
// Each kind: its label, what its rows are, and what the file holds (README, Datasets).
const KINDS = {
  pairs: [
    "pairs", "rows of prompt, chosen and rejected image",
    "a .zip or .tar(.gz) with pairs.jsonl or pairs.csv (prompt, chosen, rejected) and the images, or folders w/ and l/ of chosen and rejected images; or a Pick-a-Pic .parquet",
  ],
  targets: [
    "targets", "rows of prompt and the image wanted; the base model draws the rejected one",
    "a .zip or .tar(.gz) of images with same-name .txt captions (cat1.png + cat1.txt), or with pairs.jsonl or pairs.csv (prompt, image); or a .parquet (prompt, image)",
  ],
  avoid: [
    "avoid", "rows of prompt, the image to steer away from and the generation_prompt of the chosen one",
    "a .zip or .tar(.gz) with pairs.jsonl or pairs.csv (prompt, image, generation_prompt) and the images; or a .parquet with those columns",
  ],
};

export async function datasetsPage({ root, api, signal, showError }) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "Load more");
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
    uploadForm({ api, signal, onUploaded: () => reload().catch(showError) }),
    h("div", { class: "card flush" }, h("table", { class: "table", id: "datasets" },
      h("thead", {}, h("tr", {}, ["Name", "Dataset", "Pairs", "Size", "Uploaded"].map((t) => h("th", {}, t)))),
      body)),
    more,
  );
  let after = null;
  async function load() {
    const query = new URLSearchParams({ limit: PAGE });
    if (after) query.set("after", after);
    const page = await api.json(`/v1/datasets?${query}`, { signal });
    body.append(...page.data.map((d) => h("tr", { "data-dataset": d.id },
      h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name)),
      h("td", { class: "mono" }, d.id),
      h("td", { class: "mono" }, d.num_pairs),
      h("td", {}, formatBytes(d.bytes)),
      h("td", {}, formatTime(d.created_at)))));
    if (!body.childElementCount) {
      body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" },
        "No datasets yet: upload one above, or ", h("code", {}, "mapo datasets upload FILE"), ".")));
    }
    after = page.data.at(-1)?.id ?? after;
    more.hidden = !page.has_more;
  }
  async function reload() {
    after = null;
    const rows = [...body.children];
    await load();
    for (const row of rows) row.remove();
  }
  more.addEventListener("click", () => load().catch(showError));
  await load();
}

/** The upload form: file, name, kind and (kind targets) trigger word; a refusal lists each problem with its row and field. */
function uploadForm({ api, signal, onUploaded }) {
  const file = h("input", {
    type: "file", id: "upload-file", name: "file", accept: FORMATS, required: true,
    "aria-describedby": "upload-file-hint",
  });
  const name = h("input", {
    type: "text", id: "upload-name", name: "name", maxlength: 200, autocomplete: "off", placeholder: "the file's name",
  });
  const kind = h("select", { id: "upload-kind", name: "kind", "aria-describedby": "upload-kind-hint" },
    Object.entries(KINDS).map(([value, [label]]) => h("option", { value }, label)));
  const kindHint = h("p", { class: "hint", id: "upload-kind-hint" });
  const fileHint = h("p", { class: "hint", id: "upload-file-hint" });
  // Only captioned images (kind targets) take a trigger word; disabled, the field is not sent.
  const trigger = h("input", {
    type: "text", id: "upload-trigger-word", name: "trigger_word", maxlength: 100, autocomplete: "off",
    placeholder: "e.g. sks", "aria-describedby": "upload-trigger-word-hint",
  });
  const triggerField = h("div", { class: "field", id: "upload-trigger-word-field" },
    h("label", { for: "upload-trigger-word" }, "Trigger word"), trigger,
    h("p", { class: "hint", id: "upload-trigger-word-hint" },
      "captioned images: the word the adapter learns, put in each caption at [trigger], else in front"));
  const describeKind = () => {
    const [, rows, files] = KINDS[kind.value];
    kindHint.textContent = rows;
    fileHint.textContent = `${files} (README, Datasets)`;
    triggerField.hidden = trigger.disabled = kind.value !== "targets";
  };
  kind.addEventListener("change", describeKind);
  describeKind();
  const submit = h("button", { type: "submit", class: "primary" }, "Upload");
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const result = h("p", { id: "upload-result", role: "status", hidden: true });
  const error = h("div", { id: "upload-error", class: "upload-error", role: "alert", hidden: true });
  const form = h("form", { id: "upload", class: "card upload-form" },
    h("h2", {}, "Upload a dataset"),
    h("div", { class: "form-grid" },
      h("div", { class: "field" }, h("label", { for: "upload-file" }, "File"), file, fileHint),
      h("div", { class: "field" }, h("label", { for: "upload-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "upload-kind" }, "Kind"), kind, kindHint),
      triggerField),
    h("div", { class: "actions" }, submit, progress),
    result,
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (!name.value.trim()) data.delete("name"); // the API names it after the file
    if (!trigger.value.trim()) data.delete("trigger_word");
    result.hidden = error.hidden = true;
    submit.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    try {
      const dataset = await api.upload("/v1/datasets", data, {
        signal,
        onProgress: (sent, total) => { progress.value = sent / total; },
      });
      form.reset();
      describeKind();
      showUploaded(result, dataset);
      onUploaded(dataset);
    } catch (err) {
      if (err.name === "AbortError") return;
      showRefusal(error, err, file.files[0]?.name);
    } finally {
      submit.disabled = false;
      progress.hidden = true;
    }
  });
  return form;
}

function showUploaded(result, dataset) {
  result.dataset.dataset = dataset.id;
  clear(result).append(
    `Uploaded “${dataset.name}”: ${dataset.num_pairs} pairs, kind ${dataset.kind}. `,
    h("a", { href: `#/datasets/${dataset.id}` }, "See its pairs"), " · ",
    h("a", { href: `#/jobs/new?dataset=${dataset.id}` }, "Train a job on it"));
  result.hidden = false;
}

function showRefusal(box, err, fileName) {
  // The message of a refusal repeats its problems in one line; the table shows them readably instead.
  const message = err.problems.length ? `${fileName}: fix these and upload it again.` : err.message;
  clear(box).append(
    h("h3", {}, err.code === "dataset_rejected" ? "The dataset was refused" : "The upload failed"),
    h("p", { class: "error-message" }, message));
  if (err.problems.length) {
    box.append(
      h("table", { class: "table problems", id: "upload-problems" },
        h("caption", {}, "Rows count from 0: the first data row of pairs.jsonl, pairs.csv (after its header) or the parquet is row 0; – is the file as a whole."),
        h("thead", {}, h("tr", {}, ["Row", "Field", "Problem"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, err.problems.map((p) => h("tr", {},
          h("td", { class: "mono" }, p.row ?? "–"),
          h("td", { class: "mono" }, p.field ?? "–"),
          h("td", {}, p.reason))))));
  }
  box.hidden = false;
}

export async function datasetPage({ root, api, signal, showError }, datasetId) {
  const base = `/v1/datasets/${encodeURIComponent(datasetId)}`;
  const dataset = await api.json(base, { signal });
  const grid = h("div", { class: "pairs", id: "pairs" });
  const more = h("button", { type: "button", hidden: true }, "Load more pairs");
  root.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", dataset.name),
    h("div", { class: "page-head" }, h("h1", {}, dataset.name),
      h("div", { class: "actions" }, h("span", { class: "muted" }, `${dataset.num_pairs} pairs`),
        // A dataset row exists only once its files are complete, so every dataset can be trained on.
        h("a", { class: "button primary", id: "train", href: `#/jobs/new?dataset=${dataset.id}` }, "Train a job on it"))),
    h("div", { class: "card summary" }, h("dl", { class: "facts" }, [
      ["Dataset", h("span", { class: "mono" }, dataset.id)],
      ["Kind", dataset.kind ?? "unknown"],
      ["Pairs", dataset.num_pairs],
      ["Upload size", formatBytes(dataset.bytes)],
      ["Uploaded", formatTime(dataset.created_at)],
      ["sha256", h("span", { class: "mono small" }, dataset.sha256)],
    ].map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))))),
    h("section", {}, h("h2", {}, "Pairs"), grid, more),
  );
  let after = null;
  async function load() {
    const query = new URLSearchParams({ limit: PAGE });
    if (after !== null) query.set("after", after);
    const page = await api.json(`${base}/pairs?${query}`, { signal });
    grid.append(...page.data.map((pair) => pairCard(api, pair, showError)));
    after = page.data.at(-1)?.index ?? after;
    more.hidden = !page.has_more;
  }
  more.addEventListener("click", () => load().catch(showError));
  await load();
}

function pairCard(api, pair, showError) {
  const image = (url, role) => {
    // Targets and avoid datasets: the base model draws this side when a job starts; there is no file yet.
    if (!url) {
      return h("figure", { class: role },
        h("div", { class: "pair-image drawn-later", "data-role": role }, "drawn by the base model at job start"),
        h("figcaption", {}, role));
    }
    const img = h("img", { alt: `${role} image of pair ${pair.index}`, class: "pair-image", "data-role": role });
    api.imageUrl(url).then((src) => { img.src = src; }, showError);
    return h("figure", { class: role }, img, h("figcaption", {}, role));
  };
  const figures = [image(pair.chosen_url, "chosen"), image(pair.rejected_url, "rejected")];
  // The preference mask (white where the preference applies), beside the pair it weighs.
  if (pair.mask_url) figures.push(image(pair.mask_url, "mask"));
  return h("article", { class: "card pair", "data-pair": pair.index },
    h("p", { class: "prompt" }, h("span", { class: "muted mono" }, `#${pair.index} `), pair.prompt),
    h("div", { class: "pair-images", "data-images": figures.length }, ...figures));
}
