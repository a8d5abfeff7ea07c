from sqlalchemy.orm import Session

from core.repositories import workers as worker_repo
from tests.support.factories import advertisement


def test_a_worker_that_starts_again_under_its_name_replaces_its_row(session: Session) -> None:
    worker_repo.register_worker(session, advertisement("gpu1@h1"))
    worker_repo.mark_stopped(session, "gpu1@h1")
    session.commit()
    worker_repo.register_worker(session, advertisement("gpu1@h1", gpu_count=4, queues=["mapo.gpu"]))
    session.commit()
    session.expire_all()
    (row,) = worker_repo.list_workers(session)
    assert (row.id, row.gpu_count, row.queues, row.stopped_at) == ("gpu1@h1", 4, ["mapo.gpu"], None)


def test_touch_stamps_a_known_worker_and_reports_a_missing_one(session: Session) -> None:
    worker_repo.register_worker(session, advertisement("gpu1@h1"))
    session.commit()
    before = worker_repo.list_workers(session)[0].last_seen_at
    assert worker_repo.touch_worker(session, "gpu1@h1")
    assert not worker_repo.touch_worker(session, "gone@h2")
    session.commit()
    session.expire_all()
    assert worker_repo.list_workers(session)[0].last_seen_at >= before
