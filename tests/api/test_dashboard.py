"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real
API server: a job trained by the real worker and trainer, a job whose events arrive while the page is
open, a failed job, a dataset, and the forms that start work (an upload, accepted and refused; a new job,
created and refused). Screenshots go to test-output/dashboard/ (printed at the end).

Locally the test skips, saying why, when Playwright or /usr/bin/chromium is missing; in CI
(MAPO_TEST_REQUIRE_SERVICES=1) it fails instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

import migrations
from api.main import create_app
from core.db import Database
from core.queue import make_producer
from core.repositories import events as event_repo
from core.repositories import jobs as job_repo
from core.repositories import workers as worker_repo
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.support.archives import jsonl, make_zip, pair_row, png, target_files, valid_files
from tests.support.availability import unavailable
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.factories import (
    TEST_PEPPER,
    advertisement,
    auth_headers,
    create_dataset,
    create_job,
    create_tenant,
)
from tests.support.ports import free_port
from tests.support.specs import FAST_TRAINING
from trainer.events import Evaluation, Sample, SampleImage, Started, Step
from trainer.families import FAMILIES
from trainer.synthetic.demo_data import make_demo_dataset
from worker.context import WorkerContext
from worker.recorder import Recorder
from worker.staging import JobOutputs

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"
CHARTS = ("loss", "errors", "margin", "accuracy", "lr")
PROMPTS = ["a warm red circle", "a cool blue square"]
TRAINED_SPEC: dict[str, Any] = {
    "base_model": "tiny-sd",
    "method": "mapo",
    **FAST_TRAINING,
    "max_train_steps": 8,
    "checkpoint_every_n_steps": 4,
    "eval_fraction": 0.25,
    "eval_every_n_steps": 2,
    "validation": {"prompts": PROMPTS, "every_n_steps": 4, "num_inference_steps": 2},
}


@dataclass(frozen=True)
class Service:
    url: str
    settings: Settings
    database: Database
    tenant_id: str
    key: str


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Callable[[str], Path]
) -> Iterator[Service]:
    """The API (create_app, as `mapo serve` runs it) on a free port, on its own migrated SQLite, offering a
    tiny model of every family under serve's names (`tiny-sd`, `tiny-flux`, ...)."""
    root = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        environment="test",
        data_dir=root / "data",
        api_key_pepper=TEST_PEPPER,  # type: ignore[arg-type]
        base_models={f"tiny-{family}": str(tiny_models(family)) for family in FAMILIES},
        sse_poll_seconds=0.1,
    )
    settings.ensure_dirs()
    migrations.upgrade(settings.sqlalchemy_url)
    database = Database(settings)
    with database.session_scope() as session:
        tenant = create_tenant(session)
        key = auth_headers(session, tenant)["Authorization"].removeprefix("Bearer ")
        tenant_id = tenant.id
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield Service(f"http://127.0.0.1:{port}", settings, database, tenant_id, key)
    server.should_exit = True
    thread.join(timeout=30)
    database.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable(
            "the playwright package is not installed (pip install -e '.[dev]'); dashboard test skipped"
        )
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium); dashboard test skipped")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def page(browser: Browser, service: Service) -> Iterator[Page]:
    """A tab signed in with the tenant's key through the sign-in form."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{service.url}/")
    tab.fill("#api-key", service.key)
    tab.click("#signin button[type=submit]")
    tab.wait_for_selector("#jobs, .empty-state:not([hidden])")
    yield tab
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
    print(f"\ndashboard screenshots: {sorted(str(p) for p in SCREENSHOTS.glob('*.png'))}")


def trained_job(service: Service) -> tuple[str, str]:
    """A job trained to the end by the real worker runner and trainer; returns (job id, dataset id)."""
    from worker.runner import run_job  # torch loads here

    storage = LocalStorage(service.settings.storage_root)
    with service.database.session_scope() as session:
        dataset = create_dataset(session, tenant_id=service.tenant_id, num_pairs=12, name="warm vs cool")
        make_demo_dataset(storage.local_path(dataset.storage_key), num_pairs=12, resolution=32)
        job = create_job(
            session,
            tenant_id=service.tenant_id,
            dataset_id=dataset.id,
            spec=TRAINED_SPEC,
            validation=TRAINED_SPEC["validation"],
        )
        job_id, dataset_id = job.id, dataset.id
    context = WorkerContext(service.settings, service.database, storage, "dashboard-test:1")
    assert run_job(job_id, context) == "succeeded"
    return job_id, dataset_id


def chart_points(page: Page, chart: str, metric: str) -> int:
    found = page.locator(f'svg[data-chart="{chart}"] polyline[data-metric="{metric}"]')
    return int(found.get_attribute("data-points") or 0) if found.count() else 0


def wait_for_points(page: Page, chart: str, metric: str, count: int) -> None:
    selector = f'svg[data-chart="{chart}"] polyline[data-metric="{metric}"][data-points="{count}"]'
    page.wait_for_selector(selector, state="attached")


def loaded_images(page: Page, selector: str) -> list[int]:
    """naturalWidth of every image matching `selector`, once each has finished loading."""
    page.wait_for_function(
        "(s) => { const all = [...document.querySelectorAll(s)];"
        " return all.length > 0 && all.every((img) => img.complete && img.naturalWidth > 0); }",
        arg=selector,
    )
    widths: list[int] = page.eval_on_selector_all(selector, "(all) => all.map((img) => img.naturalWidth)")
    return widths


def test_a_finished_job_shows_its_curves_images_and_checkpoints_as_it_ended(
    page: Page, service: Service
) -> None:
    job_id, _ = trained_job(service)
    page.goto(f"{service.url}/ui/#/jobs")
    page.reload()
    page.wait_for_selector(f'tr[data-job="{job_id}"] [data-status="succeeded"]')
    page.screenshot(path=str(SCREENSHOTS / "jobs-list.png"), full_page=True)

    for visit in ("first", "reload"):
        if visit == "reload":
            page.reload()
        else:
            page.click(f'a[href="#/jobs/{job_id}"]')
        # The page has replayed the whole event log and the server has closed the stream.
        page.wait_for_selector('#main[data-stream="ended"] h1 [data-status="succeeded"]')
        wait_for_points(page, "loss", "loss", 8)
        for chart, metric in [("errors", "chosen_loss"), ("margin", "margin"), ("lr", "lr")]:
            assert chart_points(page, chart, metric) == 8, chart
        # Held-out accuracy is measured before training, every 2 steps and at the end.
        assert chart_points(page, "accuracy", "heldout_accuracy") == 5
        assert page.locator('svg[data-chart="loss"] circle').count() == 8
        # Per prompt: the base model's image, then the LoRA's at steps 4 and 8.
        assert len(loaded_images(page, "#samples img.thumb")) == len(PROMPTS) * 3
        headers = page.locator("#samples th").all_inner_texts()
        assert headers == ["Prompt", "Base model", "Step 4", "Step 8"]
        assert page.locator("#samples td.prompt").all_inner_texts() == PROMPTS
        assert page.locator("#checkpoints tbody td:first-child").all_inner_texts() == ["4", "8"]
        assert page.locator("#step").inner_text() == "step 8 / 8"
        assert page.locator('[data-download="diffusers"]').is_visible()
        assert page.locator("#cancel").count() == 0
        page.wait_for_selector("#log li[data-event]")
    page.screenshot(path=str(SCREENSHOTS / "job-finished.png"), full_page=True)

    with page.expect_download() as download:
        page.click('[data-download="diffusers"]')
    assert download.value.suggested_filename == "pytorch_lora_weights.safetensors"


def record(service: Service, job_id: str, events: list[Any]) -> None:
    """Write `events` the way a worker does: through the recorder of the worker holding the job, flushed
    on close."""
    storage, key = LocalStorage(service.settings.storage_root), job_key(service.tenant_id, job_id)
    with service.database.session_scope() as session:
        job = job_repo.get_job_any_tenant(session, job_id)
        assert job is not None and job.worker_id is not None, "claim the job first"
        worker_id = job.worker_id
    recorder = Recorder(
        service.database,
        job_id,
        worker_id=worker_id,
        outputs=JobOutputs(storage, key, storage.local_path(key)),
        producer=make_producer(service.settings),
    ).start()
    for event in events:
        recorder(event)
    recorder.close()


def step(n: int, total_steps: int = 12) -> Step:
    metrics = {
        "loss": 0.5 / n,
        "chosen_loss": 0.4 / n,
        "rejected_loss": 0.6 / n,
        "margin": 0.01 * n,
        "accuracy": min(1.0, 0.4 + 0.05 * n),
        "lr": 1e-4,
    }
    return Step(step=n, total_steps=total_steps, metrics=metrics)


def test_a_running_job_grows_its_curves_as_events_arrive(page: Page, service: Service) -> None:
    with service.database.session_scope() as session:
        job_id = create_job(session, tenant_id=service.tenant_id, total_steps=12).id
        job_repo.claim_job(session, job_id, worker_id="dashboard-test:2")
    started = Started(12, 0, 9, 3, "sd", 32, "no", 1234)
    record(service, job_id, [started, step(1), step(2), step(3)])

    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    page.wait_for_selector('h1 [data-status="running"]')
    wait_for_points(page, "loss", "loss", 3)
    assert page.locator("#cancel").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "job-running-step3.png"), full_page=True)

    record(service, job_id, [step(4), step(5), step(6), Evaluation(6, {"heldout_accuracy": 0.75})])
    wait_for_points(page, "loss", "loss", 6)
    wait_for_points(page, "accuracy", "heldout_accuracy", 1)
    page.wait_for_function("() => document.querySelector('#step').textContent === 'step 6 / 12'")
    page.screenshot(path=str(SCREENSHOTS / "job-running-step6.png"), full_page=True)

    with service.database.session_scope() as session:
        job_repo.finish_job(session, job_id, status="succeeded")
        event_repo.append_event(session, job_id, "succeeded", "job succeeded")
    page.wait_for_selector('h1 [data-status="succeeded"]')
    assert chart_points(page, "loss", "loss") == 6


def test_a_long_job_draws_each_curve_from_at_most_480_points_though_its_log_replays_every_step(
    page: Page, service: Service
) -> None:
    steps = 2000
    with service.database.session_scope() as session:
        job_id = create_job(session, tenant_id=service.tenant_id, total_steps=steps).id
        job_repo.claim_job(session, job_id, worker_id="dashboard-test:4")
    started = Started(steps, 0, 9, 3, "sd", 32, "no", 1234)
    record(service, job_id, [started, *(step(n, steps) for n in range(1, steps + 1))])
    with service.database.session_scope() as session:
        job_repo.finish_job(session, job_id, status="succeeded")
        event_repo.append_event(session, job_id, "succeeded", "job succeeded")

    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    page.wait_for_selector(f'#main[data-stream="ended"] h1:has-text("{job_id}") [data-status="succeeded"]')
    assert page.locator("#step").inner_text() == f"step {steps} / {steps}"
    for chart, metric in [("loss", "loss"), ("margin", "margin"), ("lr", "lr")]:
        assert 2 < chart_points(page, chart, metric) <= 480, chart


def test_a_failed_job_shows_its_error(page: Page, service: Service) -> None:
    with service.database.session_scope() as session:
        job_id = create_job(session, tenant_id=service.tenant_id).id
        job_repo.claim_job(session, job_id, worker_id="dashboard-test:3")
        job_repo.finish_job(
            session,
            job_id,
            status="failed",
            error_code="non_finite_loss",
            error_message="loss is nan at step 3",
        )
        event_repo.append_event(session, job_id, "failed", "job failed: non_finite_loss", level="error")
    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    page.wait_for_selector('h1 [data-status="failed"]')
    error = page.locator("#job-error")
    assert error.is_visible()
    assert "non_finite_loss" in error.inner_text() and "loss is nan at step 3" in error.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "job-failed.png"), full_page=True)


def test_a_dataset_page_shows_each_prompt_with_its_chosen_and_rejected_image(
    page: Page, service: Service
) -> None:
    storage = LocalStorage(service.settings.storage_root)
    with service.database.session_scope() as session:
        dataset = create_dataset(session, tenant_id=service.tenant_id, num_pairs=30, name="demo pairs")
        manifest_dir = storage.local_path(dataset.storage_key)
        dataset_id = dataset.id
    make_demo_dataset(manifest_dir, num_pairs=30, resolution=64)
    page.goto(f"{service.url}/ui/#/datasets")
    page.click(f'tr[data-dataset="{dataset_id}"] a')
    page.wait_for_selector("#pairs article[data-pair]")
    assert page.locator("#pairs article").count() == 24  # the first page
    widths = loaded_images(page, "#pairs img")
    assert widths == [64] * 48
    first = page.locator('#pairs article[data-pair="0"]')
    assert first.locator(".prompt").inner_text().removeprefix("#0 ").strip()
    assert first.locator("figcaption").all_inner_texts() == ["chosen", "rejected"]
    page.screenshot(path=str(SCREENSHOTS / "dataset.png"), full_page=True)
    page.click("text=Load more pairs")
    page.wait_for_selector('#pairs article[data-pair="29"]')
    assert page.locator("#pairs article").count() == 30


def test_a_targets_dataset_shows_the_side_drawn_at_job_start_as_a_placeholder(
    page: Page, service: Service, tmp_path: Path
) -> None:
    archive = make_zip(tmp_path / "targets.zip", target_files(3))
    dataset_id = upload(service, archive, "wanted", kind="targets")
    page.goto(f"{service.url}/ui/#/datasets/{dataset_id}")
    page.wait_for_selector('#pairs article[data-pair="2"]')
    assert loaded_images(page, '#pairs img[data-role="chosen"]') == [16, 16, 16]
    placeholders = page.locator('#pairs .drawn-later[data-role="rejected"]')
    assert placeholders.count() == 3
    assert "base model" in placeholders.first.inner_text()
    assert page.locator("#banner").is_hidden(), "no error shown"
    page.screenshot(path=str(SCREENSHOTS / "dataset-targets.png"), full_page=True)


def test_a_masked_pair_shows_its_mask_beside_its_images(page: Page, service: Service, tmp_path: Path) -> None:
    files = valid_files(2)
    files["pairs.jsonl"] = jsonl([pair_row(0) | {"mask": "mask.png"}, pair_row(1)])
    files["mask.png"] = png((255, 255, 255), size=(24, 24))  # any size: the trainer stretches it
    dataset_id = upload(service, make_zip(tmp_path / "masked.zip", files), "masked")
    page.goto(f"{service.url}/ui/#/datasets/{dataset_id}")
    page.wait_for_selector('#pairs article[data-pair="1"]')
    assert loaded_images(page, '#pairs img[data-role="mask"]') == [24]
    masked = page.locator('#pairs article[data-pair="0"]')
    assert masked.locator("figcaption").all_inner_texts() == ["chosen", "rejected", "mask"]
    plain = page.locator('#pairs article[data-pair="1"]')
    assert plain.locator("figcaption").all_inner_texts() == ["chosen", "rejected"]
    page.screenshot(path=str(SCREENSHOTS / "dataset-masks.png"), full_page=True)


def api_get(service: Service, path: str) -> Any:
    response = httpx.get(f"{service.url}{path}", headers={"Authorization": f"Bearer {service.key}"})
    assert response.status_code == 200, response.text
    return response.json()


def upload(service: Service, archive: Path, name: str, *, kind: str = "pairs") -> str:
    """Upload `archive` through the REST API; returns the new dataset's id."""
    with archive.open("rb") as stream:
        response = httpx.post(
            f"{service.url}/v1/datasets",
            files={"file": (archive.name, stream)},
            data={"kind": kind, "name": name},
            headers={"Authorization": f"Bearer {service.key}"},
        )
    assert response.status_code == 201, response.text
    dataset_id: str = response.json()["id"]
    return dataset_id


def test_a_dataset_uploaded_from_the_form_is_listed(page: Page, service: Service, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "three.zip", valid_files(3))
    page.goto(f"{service.url}/ui/#/datasets")
    page.set_input_files("#upload-file", str(archive))
    page.fill("#upload-name", "three warm pairs")
    page.click("#upload button[type=submit]")

    page.wait_for_selector("#upload-result[data-dataset]")
    dataset_id = page.locator("#upload-result").get_attribute("data-dataset")
    assert "3 pairs" in page.locator("#upload-result").inner_text()
    row = page.locator(f'#datasets tr[data-dataset="{dataset_id}"]')
    row.wait_for()
    assert row.locator("td").first.inner_text() == "three warm pairs"
    assert row.locator("td").nth(2).inner_text() == "3"
    assert page.locator("#upload-error").is_hidden()
    listed = api_get(service, "/v1/datasets?limit=200")["data"]
    assert [(d["name"], d["num_pairs"]) for d in listed if d["id"] == dataset_id] == [("three warm pairs", 3)]
    page.screenshot(path=str(SCREENSHOTS / "dataset-uploaded.png"), full_page=True)


def test_a_refused_upload_lists_each_problem_with_its_row_and_field(
    page: Page, service: Service, tmp_path: Path
) -> None:
    files = valid_files(1)
    files["pairs.jsonl"] = jsonl(
        [
            pair_row(0),
            {"prompt": "missing file", "chosen": "images/nope.png", "rejected": "images/0_c.png"},
            {"prompt": "   ", "chosen": "images/0_w.png", "rejected": "images/0_c.png"},
        ]
    )
    before = len(api_get(service, "/v1/datasets?limit=200")["data"])
    page.goto(f"{service.url}/ui/#/datasets")
    page.set_input_files("#upload-file", str(make_zip(tmp_path / "broken.zip", files)))
    page.click("#upload button[type=submit]")

    page.wait_for_selector("#upload-problems tbody tr")
    error = page.locator("#upload-error")
    assert "broken.zip" in error.locator(".error-message").inner_text()
    rows = page.locator("#upload-problems tbody tr")
    found = {
        tuple(rows.nth(i).locator("td").all_inner_texts()[:2]): rows.nth(i).locator("td").nth(2).inner_text()
        for i in range(rows.count())
    }
    assert set(found) == {("1", "chosen"), ("2", "prompt")}
    assert "not in the archive" in found[("1", "chosen")]
    assert found[("2", "prompt")] == "prompt is empty"
    assert page.locator("#upload-result").is_hidden()
    assert len(api_get(service, "/v1/datasets?limit=200")["data"]) == before
    page.screenshot(path=str(SCREENSHOTS / "dataset-refused.png"), full_page=True)


def test_a_job_created_from_the_form_is_queued_with_the_chosen_hyperparameters(
    page: Page, service: Service, tmp_path: Path
) -> None:
    dataset_id = upload(service, make_zip(tmp_path / "two.zip", valid_files(2)), "for a job")
    page.goto(f"{service.url}/ui/#/datasets/{dataset_id}")
    page.click("#train")
    page.wait_for_selector("#job-form")
    assert page.locator("#job-dataset").input_value() == dataset_id
    page.select_option("#job-base-model", "tiny-sd")
    assert page.locator("#job-method").input_value() == "mapo"
    page.fill("#job-beta", "0.5")  # a MaPO field: switching to DPO hides it, and it is not sent
    page.select_option("#job-method", "dpo")
    assert page.locator("#job-beta").is_hidden() and page.locator("#job-beta-dpo").is_visible()
    page.fill("#job-steps", "30")
    page.fill("#job-lr", "1e-3")
    page.fill("#job-batch", "2")
    page.fill("#job-beta-dpo", "250")
    page.fill("#job-prompts", "a red circle\n\n  a blue square  \n")
    page.fill("#job-every", "10")
    page.click("#job-form details.extra summary")
    page.fill("#job-extra", '{"lora_rank": 4, "train_batch_size": 16}')  # the form's own batch size wins
    page.screenshot(path=str(SCREENSHOTS / "job-new.png"), full_page=True)
    page.click("#job-form button[type=submit]")

    page.wait_for_url("**/ui/#/jobs/job_*")
    page.wait_for_selector('h1 [data-status="queued"]')
    job_id = page.url.rsplit("/", 1)[-1]
    assert page.locator("#step").inner_text() == "step 0 / 30"
    job = api_get(service, f"/v1/jobs/{job_id}")
    assert (job["status"], job["dataset_id"], job["base_model"], job["method"]) == (
        "queued",
        dataset_id,
        "tiny-sd",
        "dpo",
    )
    chosen = {k: job["hyperparameters"][k] for k in ("max_train_steps", "learning_rate", "train_batch_size")}
    assert chosen == {"max_train_steps": 30, "learning_rate": 1e-3, "train_batch_size": 2}
    assert job["hyperparameters"]["beta_dpo"] == 250
    assert job["hyperparameters"]["lora_rank"] == 4
    assert job["hyperparameters"]["beta"] == 0.1, "the hidden MaPO beta was sent"
    assert job["validation"]["prompts"] == ["a red circle", "a blue square"]
    assert job["validation"]["every_n_steps"] == 10


def test_a_job_the_api_refuses_marks_the_field_it_names(page: Page, service: Service, tmp_path: Path) -> None:
    dataset_id = upload(service, make_zip(tmp_path / "two.zip", valid_files(2)), "for a refused job")
    jobs_before = len(api_get(service, "/v1/jobs?limit=200")["data"])
    page.goto(f"{service.url}/ui/#/jobs")
    page.click("#new-job")
    page.wait_for_selector("#job-form")
    page.select_option("#job-dataset", dataset_id)
    page.select_option("#job-base-model", "tiny-sd")
    page.fill("#job-lr", "2")  # the API takes at most 1
    page.click("#job-form button[type=submit]")

    page.wait_for_selector('#job-lr[aria-invalid="true"]')
    message = page.locator("#job-lr-error").inner_text()
    assert "less than or equal to 1" in message
    assert "hyperparameters.learning_rate" in page.locator("#job-form-error").inner_text()
    assert page.url.endswith("#/jobs/new")

    page.fill("#job-lr", "")
    page.fill("#job-every", "5")  # a schedule without prompts: a combination only the API checks
    page.click("#job-form button[type=submit]")
    page.wait_for_selector('#job-every[aria-invalid="true"]')
    assert page.locator("#job-lr").get_attribute("aria-invalid") is None
    assert "validation.prompts is empty" in page.locator("#job-every-error").inner_text()

    page.fill("#job-every", "")
    page.click("#job-form details.extra summary")
    page.fill("#job-extra", '{"lora_rank": 4,}')
    page.click("#job-form button[type=submit]")
    page.wait_for_selector('#job-extra[aria-invalid="true"]')
    assert "not valid JSON" in page.locator("#job-extra-error").inner_text()

    page.fill("#job-extra", '{"guidance": 3.5}')  # FLUX's: a field tiny-sd's family does not take
    page.click("#job-form button[type=submit]")
    page.wait_for_selector('#job-extra-error:has-text("guidance")')
    assert page.locator("#job-every").get_attribute("aria-invalid") is None
    assert "hyperparameters.guidance" in page.locator("#job-form-error").inner_text()
    assert len(api_get(service, "/v1/jobs?limit=200")["data"]) == jobs_before
    page.screenshot(path=str(SCREENSHOTS / "job-refused.png"), full_page=True)


def test_each_sample_image_is_labelled_with_its_prompt_and_step(page: Page, service: Service) -> None:
    prompts = ["a small green triangle", "a large orange square on grey"]
    with service.database.session_scope() as session:
        job_id = create_job(
            session, tenant_id=service.tenant_id, total_steps=10, validation={"prompts": prompts}
        ).id
        job_repo.claim_job(session, job_id, worker_id="dashboard-test:5")
    folder = LocalStorage(service.settings.storage_root).local_path(job_key(service.tenant_id, job_id))
    samples = []
    for at, with_lora in [(0, False), (5, True), (10, True)]:
        images = []
        for index, prompt in enumerate(prompts):
            path = folder / "samples" / f"step_{at}" / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(size=(24, 24)))
            images.append(SampleImage(prompt=prompt, path=str(path), with_lora=with_lora))
        samples.append(Sample(step=at, images=images))
    record(service, job_id, [Started(10, 0, 9, 3, "sd", 24, "no", 1234), *samples])

    page.goto(f"{service.url}/ui/#/jobs/{job_id}")
    assert loaded_images(page, "#samples figure img.thumb") == [24] * 6
    captions = page.locator("#samples figure figcaption")
    labels = [" ".join(text.split()) for text in captions.all_inner_texts()]
    assert labels == [
        f"{when} {prompt}" for prompt in prompts for when in ("base model", "step 5", "step 10")
    ]
    first = page.locator("#samples figure img.thumb").first
    assert first.get_attribute("alt") == f"base model: {prompts[0]}"
    page.screenshot(path=str(SCREENSHOTS / "job-samples.png"), full_page=True)


def test_the_new_job_form_describes_every_offered_base_model_of_every_family(
    page: Page, service: Service, tmp_path: Path
) -> None:
    upload(service, make_zip(tmp_path / "two.zip", valid_files(2)), "for the base-model hints")
    offered = api_get(service, "/v1/base-models")["data"]
    assert {model["family"] for model in offered} == set(FAMILIES), "the list offers every family"
    page.goto(f"{service.url}/ui/#/jobs")
    page.click("#new-job")  # a fresh form: going to the URL the page is already at would keep the old one
    page.wait_for_selector("#job-form")
    options = page.locator("#job-base-model option").evaluate_all("(all) => all.map((o) => o.value)")
    assert options == [model["name"] for model in offered]
    hint = page.locator("#job-base-model-hint")
    first = offered[0]
    assert first["fields"], f"the form opens on {first['name']}, a model with family fields"
    shown_first = hint.locator("code").all_inner_texts()
    assert shown_first == first["fields"], f"{first['name']}, shown first: {hint.inner_text()}"

    for model in offered:
        page.select_option("#job-base-model", model["name"])
        text = hint.inner_text()
        assert "[object" not in text, f"{model['name']}: {text}"
        if model["fields"]:
            assert hint.locator("code").all_inner_texts() == model["fields"], model["name"]
            assert text.startswith("Besides the fields here, it takes "), text
        else:
            assert text == f"{model['name']} takes no family-specific fields."
        resolution = page.locator("#job-resolution").get_attribute("placeholder")
        assert resolution == f"{model['native_resolution']} (native)", model["name"]
        methods = page.locator("#job-method option").evaluate_all("(all) => all.map((o) => o.value)")
        assert methods == model["methods"], model["name"]
    page.screenshot(path=str(SCREENSHOTS / "job-new-flow-hint.png"), full_page=True)


def test_a_caption_folder_uploaded_from_the_form_takes_a_trigger_word_and_the_hints_follow_the_kind(
    page: Page, service: Service, tmp_path: Path
) -> None:
    captions = {"cat1.png": png(), "cat1.txt": b"a photo of [trigger] cat", "cat2.png": png()}
    archive = make_zip(tmp_path / "cats.zip", captions | {"cat2.txt": b"a cat asleep"})
    page.goto(f"{service.url}/ui/#/datasets")
    page.reload()
    file_hint = page.locator("#upload-file-hint")
    hints = {}
    for kind in ("pairs", "targets", "avoid"):
        page.select_option("#upload-kind", kind)
        hints[kind] = file_hint.inner_text()
        assert page.locator("#upload-trigger-word").is_visible() == (kind == "targets"), kind
    assert "w/ and l/" in hints["pairs"] and ".txt captions" in hints["targets"], hints
    assert "generation_prompt" in hints["avoid"] and len(set(hints.values())) == 3, hints

    page.select_option("#upload-kind", "targets")
    page.set_input_files("#upload-file", str(archive))
    page.fill("#upload-trigger-word", "sks")
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#upload-result[data-dataset]")
    dataset_id = page.locator("#upload-result").get_attribute("data-dataset")
    dataset = api_get(service, f"/v1/datasets/{dataset_id}")
    assert dataset["kind"] == "targets"
    assert [p["prompt"] for p in dataset["preview"]] == ["a photo of sks cat", "sks a cat asleep"]
    assert page.locator("#upload-trigger-word").is_hidden(), "the form is back to kind pairs"
    page.screenshot(path=str(SCREENSHOTS / "dataset-uploaded-captions.png"), full_page=True)


def test_a_caption_folder_uploaded_as_pairs_is_told_to_send_kind_targets(
    page: Page, service: Service, tmp_path: Path
) -> None:
    archive = make_zip(tmp_path / "cats.zip", {"cat1.png": png(), "cat1.txt": b"a cat"})
    page.goto(f"{service.url}/ui/#/datasets")
    page.reload()
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#upload-problems tbody tr")
    problem = page.locator("#upload-problems tbody td").nth(2).inner_text()
    assert problem.startswith("this looks like a caption folder") and "kind=targets" in problem, problem


def test_the_new_job_form_starts_from_a_short_run_when_every_online_worker_is_a_cpu(
    page: Page, service: Service, tmp_path: Path
) -> None:
    dataset_id = upload(service, make_zip(tmp_path / "two.zip", valid_files(2)), "for a CPU job")
    fields = ("#job-steps", "#job-lr", "#job-batch")
    page.goto(f"{service.url}/ui/#/jobs")
    page.click("#new-job")
    page.wait_for_selector("#job-form")
    # No worker online: the API's defaults, the GPU recipe, in the placeholders.
    assert page.locator("#job-device").input_value() == "cuda"
    assert [page.locator(f).input_value() for f in fields] == ["", "", ""]
    assert "No worker is online" in page.locator("#job-device-hint").inner_text()

    with service.database.session_scope() as session:
        worker_repo.register_worker(
            session, advertisement("cpu@laptop", device="cpu", gpu_model=None, gpu_count=0)
        )
    try:
        page.goto(f"{service.url}/ui/#/jobs")
        page.click("#new-job")
        page.wait_for_selector("#job-form")
        assert page.locator("#job-device").input_value() == "cpu"
        assert page.locator("#job-device-hint").inner_text() == "Online workers: 1 on a CPU."
        assert [page.locator(f).input_value() for f in fields] == ["60", "0.001", "4"]
        page.select_option("#job-device", "cuda")
        assert [page.locator(f).input_value() for f in fields] == ["", "", ""]
        page.select_option("#job-device", "cpu")
        page.select_option("#job-dataset", dataset_id)
        page.select_option("#job-base-model", "tiny-sd")
        page.click("#job-form button[type=submit]")
        page.wait_for_url("**/ui/#/jobs/job_*")
        job = api_get(service, f"/v1/jobs/{page.url.rsplit('/', 1)[-1]}")
        chosen = {
            k: job["hyperparameters"][k] for k in ("max_train_steps", "learning_rate", "train_batch_size")
        }
        assert chosen == {"max_train_steps": 60, "learning_rate": 1e-3, "train_batch_size": 4}
    finally:
        with service.database.session_scope() as session:
            worker_repo.mark_stopped(session, "cpu@laptop")
