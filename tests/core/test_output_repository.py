from sqlalchemy.orm import Session

from core.repositories import metrics as metric_repo
from core.repositories import outputs as output_repo
from core.repositories.metrics import MetricPoint
from tests.support.factories import create_job


def test_metrics_are_batched_and_a_replayed_step_overwrites(session: Session) -> None:
    job = create_job(session)
    points = [MetricPoint(step, name, step * 0.1) for step in range(1, 1201) for name in ("loss", "margin")]
    metric_repo.add_metrics(session, job.id, points)
    metric_repo.add_metrics(session, job.id, [MetricPoint(1, "loss", 9.0)])
    series = metric_repo.metric_series(session, job.id)
    assert set(series) == {"loss", "margin"}
    assert len(series["loss"]) == 1200
    assert series["loss"][0] == (1, 9.0)
    assert [s for s, _ in series["margin"][:3]] == [1, 2, 3]


def test_outputs_are_upserted_on_their_natural_keys(session: Session) -> None:
    job = create_job(session)
    output_repo.add_checkpoint(session, job.id, step=5, storage_key="k/5", metrics={"loss": 1.0})
    output_repo.add_checkpoint(session, job.id, step=5, storage_key="k/5b", metrics={"loss": 0.5})
    output_repo.add_checkpoint(session, job.id, step=10, storage_key="k/10", metrics={})
    output_repo.delete_checkpoint(session, job.id, step=10)
    checkpoints = output_repo.list_checkpoints(session, job.id)
    assert [(c.step, c.storage_key, c.metrics) for c in checkpoints] == [(5, "k/5b", {"loss": 0.5})]

    for with_lora in (True, False, True):
        output_repo.add_sample(
            session,
            job.id,
            step=0,
            index=0,
            prompt="a cat",
            with_lora=with_lora,
            storage_key=f"s/{with_lora}",
        )
    assert [s.with_lora for s in output_repo.list_samples(session, job.id)] == [False, True]

    output_repo.add_artifact(session, job.id, format="diffusers", storage_key="a", size_bytes=1, sha256="1")
    output_repo.add_artifact(session, job.id, format="diffusers", storage_key="b", size_bytes=2, sha256="2")
    artifact = output_repo.get_artifact(session, job.id, format="diffusers")
    assert artifact is not None and (artifact.storage_key, artifact.bytes) == ("b", 2)
    assert output_repo.get_artifact(session, job.id, format="kohya") is None
