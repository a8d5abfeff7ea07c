// Datasets: the list, and one dataset's pairs (prompt, chosen beside rejected), a page at a time.

import { clear, formatBytes, formatTime, h } from "./dom.js";

const PAGE = 24;

export async function datasetsPage({ root, api, signal, showError }) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "Load more");
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
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
        "No datasets yet: ", h("code", {}, "mapo datasets upload FILE"), " (a .zip, .tar or .parquet; see README).")));
    }
    after = page.data.at(-1)?.id ?? after;
    more.hidden = !page.has_more;
  }
  more.addEventListener("click", () => load().catch(showError));
  await load();
}

export async function datasetPage({ root, api, signal, showError }, datasetId) {
  const base = `/v1/datasets/${encodeURIComponent(datasetId)}`;
  const dataset = await api.json(base, { signal });
  const grid = h("div", { class: "pairs", id: "pairs" });
  const more = h("button", { type: "button", hidden: true }, "Load more pairs");
  root.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", dataset.name),
    h("div", { class: "page-head" }, h("h1", {}, dataset.name), h("span", { class: "muted" }, `${dataset.num_pairs} pairs`)),
    h("div", { class: "card summary" }, h("dl", { class: "facts" }, [
      ["Dataset", h("span", { class: "mono" }, dataset.id)],
      ["Status", dataset.status],
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
  return h("article", { class: "card pair", "data-pair": pair.index },
    h("p", { class: "prompt" }, h("span", { class: "muted mono" }, `#${pair.index} `), pair.prompt),
    h("div", { class: "pair-images" }, image(pair.chosen_url, "chosen"), image(pair.rejected_url, "rejected")));
}
