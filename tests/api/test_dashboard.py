"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against a real
API server: a job trained by the real worker and trainer, a job whose events arrive while the page is
open, a failed job and a dataset. Screenshots go to test-output/dashboard/ (printed at the end).

Locally the test skips, saying why, when Playwright or /usr/bin/chromium is missing; in CI
(MAPO_TEST_REQUIRE_SERVICES=1) it fails instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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
from core.settings import Settings
from core.storage import LocalStorage, job_key
from tests.api.test_ingest import make_zip
from tests.api.test_ingest_targets import target_files
from tests.client.conftest import free_port
from tests.conftest import TEST_PEPPER, auth_headers, create_dataset, create_job, create_tenant, unavailable
from tests.trainer.specs import FAST_TRAINING
from trainer.events import Evaluation, Started, Step
from trainer.synthetic.demo_data import make_demo_dataset
from worker.context import WorkerContext
from worker.recorder import Recorder
from worker.staging import JobOutputs

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
def service(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Iterator[Service]:
    """The API (create_app, as `mapo serve` runs it) on a free port, on its own migrated SQLite."""
    root = tmp_path_factory.mktemp("dashboard")
    settings = Settings(
        environment="test",
        data_dir=root / "data",
        api_key_pepper=TEST_PEPPER,  # type: ignore[arg-type]
        base_models={"tiny-sd": str(tiny_sd)},
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
            total_steps=TRAINED_SPEC["max_train_steps"],
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
    with archive.open("rb") as stream:
        response = httpx.post(
            f"{service.url}/v1/datasets",
            files={"file": ("targets.zip", stream)},
            data={"kind": "targets", "name": "wanted"},
            headers={"Authorization": f"Bearer {service.key}"},
        )
    assert response.status_code == 201, response.text
    page.goto(f"{service.url}/ui/#/datasets/{response.json()['id']}")
    page.wait_for_selector('#pairs article[data-pair="2"]')
    assert loaded_images(page, '#pairs img[data-role="chosen"]') == [16, 16, 16]
    placeholders = page.locator('#pairs .drawn-later[data-role="rejected"]')
    assert placeholders.count() == 3
    assert "base model" in placeholders.first.inner_text()
    assert page.locator("#banner").is_hidden(), "no error shown"
    page.screenshot(path=str(SCREENSHOTS / "dataset-targets.png"), full_page=True)
