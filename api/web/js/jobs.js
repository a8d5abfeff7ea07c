// The jobs list: status, progress and ETA of each job, newest first, refreshed while any is unfinished.

import { FINISHED, clear, formatSeconds, formatTime, h, progressBar, sleep, statusPill } from "./dom.js";

const PAGE = 25;
const REFRESH_MS = 3000; // while a job is unfinished
const IDLE_REFRESH_MS = 10000; // otherwise: a job created from the command line still shows up

export async function jobsPage({ root, api, signal, showError }) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const table = h(
    "table",
    { class: "table", id: "jobs" },
    h("thead", {}, h("tr", {}, ["Job", "Status", "Method · model", "Progress", "ETA", "Created"].map((t) => h("th", {}, t)))),
    body,
  );
  const empty = h("div", { class: "card empty-state", hidden: true },
    h("h2", {}, "No jobs yet"),
    h("p", {}, "Upload a dataset on the ", h("a", { href: "#/datasets" }, "Datasets"), " page and start a job with ",
      h("a", { href: "#/jobs/new" }, "New job"), ", or do both from a terminal (in the repository, with your key):"),
    h("pre", {}, [
      ". .venv/bin/activate && export MAPO_API_KEY=mapo_…\n",
      "mapo demo-data demo.zip\n",
      "mapo datasets upload demo.zip --name demo\n",
      "mapo jobs create --dataset ds_… --base-model tiny-sdxl --steps 20 \\\n",
      "    --set resolution=64 --set mixed_precision=no \\\n",
      "    --set 'validation={\"prompts\": [\"a red circle\"], \"every_n_steps\": 5}'",
    ]),
    h("p", { class: "muted" }, "It appears here, and its page shows the curves and images as it trains."),
  );
  const create = h("a", { class: "button primary", id: "new-job", href: "#/jobs/new" }, "New job");
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Jobs"), create), empty, h("div", { class: "card flush" }, table), more);

  let pages = 1;
  let after = null;
  async function load() {
    const jobs = [];
    let page = { has_more: false };
    after = null;
    for (let i = 0; i < pages; i += 1) {
      const query = new URLSearchParams({ limit: PAGE });
      if (after) query.set("after", after);
      page = await api.json(`/v1/jobs?${query}`, { signal });
      jobs.push(...page.data);
      after = page.data.at(-1)?.id ?? after;
      if (!page.has_more) break;
    }
    clear(body).append(...jobs.map(row));
    empty.hidden = jobs.length > 0;
    table.parentElement.hidden = jobs.length === 0;
    more.hidden = !page.has_more;
    return jobs;
  }
  more.addEventListener("click", () => {
    pages += 1;
    load().catch(showError);
  });

  let jobs = await load();
  (async () => {
    while (!signal.aborted) {
      await sleep(jobs.every((j) => FINISHED.has(j.status)) ? IDLE_REFRESH_MS : REFRESH_MS, signal);
      if (signal.aborted || document.hidden) continue;
      jobs = await load().catch((err) => (showError(err), jobs));
    }
  })();
}

function row(job) {
  const { step, total_steps: total, eta_seconds: eta } = job.progress;
  const link = h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id);
  return h(
    "tr",
    { "data-job": job.id },
    h("td", {}, link),
    h("td", {}, statusPill(job.status)),
    h("td", {}, `${job.method} · ${job.base_model}`),
    h("td", { class: `progress-cell status-${job.status}` }, progressBar(step, total), h("span", { class: "mono" }, `${step}/${total}`)),
    h("td", { class: "mono" }, job.status === "running" ? formatSeconds(eta) : "–"),
    h("td", {}, formatTime(job.created_at)),
  );
}
