"""GET /metrics scraped like Prometheus does, parsed with prometheus_client's own text parser."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from core.repositories import jobs as job_repo
from tests.support.api_calls import job_body, upload
from tests.support.archives import pairs_zip
from tests.support.factories import auth_headers, create_dataset, create_job, create_tenant

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of a scrape, by (name, labels); no API key is sent."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_request_latency_is_counted_by_route_template_method_and_status(
    client: TestClient, session: Session
) -> None:
    before = scrape(client)
    job = create_job(session, tenant_id=create_tenant(session).id)
    session.commit()
    stranger = auth_headers(session)
    for _ in range(2):
        assert client.get(f"/v1/jobs/{job.id}", headers=stranger).status_code == 404
    assert client.get("/v1/jobs", headers=stranger).status_code == 200
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)
    count = "mapo_http_request_duration_seconds_count"
    by_id = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    assert value(after, count, **by_id) - value(before, count, **by_id) == 2
    listing = {"route": "/v1/jobs", "method": "GET", "status": "200"}
    assert value(after, count, **listing) - value(before, count, **listing) == 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(after, count, **unmatched) - value(before, count, **unmatched) == 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not any(job.id in r or "no/such" in r for r in routes), "route templates only, never raw paths"


def test_jobs_by_status_and_queue_depth_come_from_the_database(client: TestClient, session: Session) -> None:
    tenant = create_tenant(session)
    for _ in range(2):
        create_job(session, tenant_id=tenant.id)
    create_job(session, tenant_id=tenant.id, status="succeeded")
    dataset = create_dataset(session, tenant_id=tenant.id)
    headers = auth_headers(session, tenant)
    hooks = [{"url": "https://hooks.example.com/x", "events": ["cancelled"]}]
    body = job_body(dataset.id, webhooks=hooks)
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).json()["status"] == "cancelled"
    samples = scrape(client)
    jobs = {
        status: value(samples, "mapo_jobs", status=status) for status in ("queued", "succeeded", "cancelled")
    }
    assert jobs == {"queued": 2, "succeeded": 1, "cancelled": 1}
    assert value(samples, "mapo_jobs", status="running") == 0
    assert value(samples, "mapo_queue_depth") == 2
    assert value(samples, "mapo_webhook_deliveries", status="pending") == 1
    assert value(samples, "mapo_database_up") == 1


def test_each_running_job_reports_its_workers_speed(client: TestClient, session: Session) -> None:
    job = create_job(session)
    session.commit()
    assert job_repo.claim_job(session, job.id, worker_id="gpu-host:41")
    # What the recorder writes after 10 of 100 steps: ETA from this run's rate, the step's own time.
    job_repo.update_progress(
        session, job.id, step=10, total_steps=100, eta_seconds=45.0, latest_metrics={"step_time_s": 0.25}
    )
    session.commit()
    samples = scrape(client)
    labels = {"worker": "gpu-host:41", "job": job.id}
    assert value(samples, "mapo_worker_steps_per_second", **labels) == 2.0
    assert value(samples, "mapo_worker_step_seconds", **labels) == 0.25
    assert 0 <= value(samples, "mapo_worker_heartbeat_age_seconds", **labels) < 3600


def test_upload_bytes_count_every_byte_received(client: TestClient, session: Session) -> None:
    headers = auth_headers(session)
    before = value(scrape(client), "mapo_upload_bytes_total")
    accepted, rejected = pairs_zip(), pairs_zip(missing_rejected=True)
    assert upload(client, headers, accepted)["http_status"] == 201
    assert upload(client, headers, rejected)["http_status"] == 422
    after = value(scrape(client), "mapo_upload_bytes_total")
    assert after - before == len(accepted) + len(rejected)
