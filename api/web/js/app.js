// The dashboard shell: sign-in with an API key, a hash router (so a reload or a shared link lands on the
// same page), and the views. Every piece of data comes from the /v1 API.

import { Api, forgetKey, storedKey, storeKey } from "./api.js";
import { datasetPage, datasetsPage } from "./datasets.js";
import { append, clear, h } from "./dom.js";
import { jobPage } from "./job.js";
import { jobsPage } from "./jobs.js";
import { newJobPage } from "./newjob.js";

const ROUTES = [
  [/^#\/jobs\/new(?:\?dataset=([\w-]+))?$/, newJobPage], // before the job page, which would take "new"
  [/^#\/jobs\/([\w-]+)$/, jobPage],
  [/^#\/datasets\/([\w-]+)$/, datasetPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/jobs$/, jobsPage],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const banner = document.getElementById("banner");
let current = null; // { controller, dispose }
let api = null;

function signedIn(key) {
  api = new Api(key, { onUnauthorized: () => signOut("Your API key was refused (revoked or wrong); sign in again.") });
  clear(nav);
  append(nav, [
    h("a", { href: "#/jobs", "data-nav": "jobs" }, "Jobs"),
    h("a", { href: "#/datasets", "data-nav": "datasets" }, "Datasets"),
    h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API docs"),
    h("button", { type: "button", class: "link", onclick: () => signOut() }, "Sign out"),
  ]);
  route();
}

function signOut(message) {
  forgetKey();
  leave();
  api = null;
  clear(nav);
  showSignIn(message);
}

function showSignIn(message) {
  const input = h("input", {
    type: "password", id: "api-key", name: "api-key", autocomplete: "off", placeholder: "mapo_…", required: true,
  });
  const remember = h("input", { type: "checkbox", id: "remember" });
  const error = h("p", { class: "form-error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "card signin", id: "signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key. ", h("code", {}, "make run"),
      " prints one on its first start; ", h("code", {}, "mapo keys create --tenant NAME"), " makes more."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("label", { class: "check" }, remember, " Keep me signed in on this browser"),
    error,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      await new Api(key, { onUnauthorized: () => {} }).json("/v1/jobs?limit=1");
    } catch (err) {
      error.textContent = err.status === 401 ? "That key was refused." : `Cannot reach the API: ${err.message}`;
      return;
    }
    storeKey(key, { remember: remember.checked });
    signedIn(key);
  });
  clear(main).append(form);
  input.focus();
}

function leave() {
  if (!current) return;
  current.controller.abort();
  current.dispose?.();
  current = null;
  api?.releaseImages();
}

async function route() {
  if (!api) return;
  if (!location.hash || location.hash === "#/") {
    location.replace("#/jobs");
    return;
  }
  leave();
  banner.hidden = true;
  const match = ROUTES.map(([pattern, view]) => [pattern.exec(location.hash), view]).find(([m]) => m);
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    link.classList.toggle("active", location.hash.startsWith(`#/${link.dataset.nav}`));
  }
  const root = clear(main);
  if (!match) {
    root.append(h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Back to the jobs.")));
    return;
  }
  const [groups, view] = match;
  const controller = new AbortController();
  current = { controller };
  try {
    current.dispose = await view({ root, api, signal: controller.signal, showError }, ...groups.slice(1));
  } catch (err) {
    if (!controller.signal.aborted) showError(err);
  }
}

export function showError(err) {
  if (err?.name === "AbortError") return;
  banner.textContent = err?.code ? `${err.message} (${err.code})` : String(err?.message || err);
  banner.hidden = false;
}

window.addEventListener("hashchange", route);
const key = storedKey();
if (key) signedIn(key);
else showSignIn();
