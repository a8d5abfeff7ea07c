"""Archives of parquet shards (Hugging Face's data/train-0000N-of-0000M.parquet): read shard by shard into
the dataset one parquet of the same rows gives, rows numbered across the shards, every problem naming its
shard, and the byte budget over all shards together."""

from __future__ import annotations

import base64
import io
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.services.ingest import IngestLimits, IngestRejected, IngestReport, Problem, ingest_upload
from api.services.ingest.collector import PairCollector
from api.services.ingest.members import MemberIndex
from api.services.ingest.parquet_shards import ingest_parquet_shards
from api.services.ingest.service import staging_dirs
from tests.support.archives import (
    PICK_SCHEMA,
    TARGETS_GENERATION_SCHEMA,
    WARM,
    is_warm,
    make_tar,
    make_zip,
    png,
    zip_bytes,
)
from tests.support.factories import auth_headers
from tests.support.parquet_shards import (
    noisy_png,
    parquet_bytes,
    pick_rows,
    shard_files,
    shard_name,
    target_rows,
    uncompressed_png,
)
from tests.support.problems import where
from trainer.dataset_format import DatasetKind, DatasetWriter, read_pairs, read_targets

ARCHIVES = ["zip", "tar.gz"]


def archive(path: Path, container: str, files: dict[str, bytes]) -> Path:
    """A zip or .tar.gz of `files`, in the order given."""
    return make_zip(path.with_suffix(".zip"), files) if container == "zip" else make_tar(path, files)


def ingest(
    upload: Path, dest: Path, *, kind: DatasetKind = "pairs", limits: IngestLimits | None = None
) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, kind=kind, limits=limits)


def rejection(
    upload: Path,
    dest: Path,
    *,
    kind: DatasetKind = "pairs",
    limits: IngestLimits | None = None,
    trigger_word: str | None = None,
) -> list[Problem]:
    """The problems of a refused upload, after checking that it left neither a dataset nor staging."""
    with pytest.raises(IngestRejected) as caught:
        ingest_upload(upload, upload.name, dest, kind=kind, limits=limits, trigger_word=trigger_word)
    assert not dest.exists()
    assert staging_dirs(dest) == [], "staging left behind"
    return caught.value.problems


def stored_pairs(root: Path) -> list[tuple[str, bytes, bytes]]:
    """Each stored pair as (prompt, chosen bytes, rejected bytes), in dataset order."""
    return [
        (pair.prompt, (root / pair.chosen).read_bytes(), (root / pair.rejected).read_bytes())
        for pair in read_pairs(root)
    ]


# --- the same dataset as one parquet -----------------------------------------------------------------------


@pytest.mark.parametrize("container", ARCHIVES)
def test_three_shards_give_the_dataset_one_parquet_of_the_same_rows_gives(
    tmp_path: Path, container: str
) -> None:
    rows = pick_rows(40)
    single = tmp_path / "one.parquet"
    single.write_bytes(parquet_bytes(rows))
    upload = archive(tmp_path / "shards.tar.gz", container, shard_files(rows, 3))

    one, sharded = ingest(single, tmp_path / "one"), ingest(upload, tmp_path / "sharded")

    assert (sharded.num_pairs, sharded.dropped_ties) == (one.num_pairs, one.dropped_ties) == (40, 0)
    assert sharded.preview == one.preview
    assert stored_pairs(tmp_path / "sharded") == stored_pairs(tmp_path / "one")
    assert [p.prompt for p in read_pairs(tmp_path / "sharded")] == [f"a shape {n}" for n in range(40)]
    assert all(is_warm(tmp_path / "sharded" / p.chosen) for p in read_pairs(tmp_path / "sharded"))


@pytest.mark.parametrize("container", ARCHIVES)
def test_shards_are_read_in_name_order_whatever_their_order_in_the_archive(
    tmp_path: Path, container: str
) -> None:
    shards = shard_files(pick_rows(30), 3)
    upload = archive(tmp_path / "shards.tar.gz", container, dict(reversed(shards.items())))

    ingest(upload, tmp_path / "ds")

    assert [p.prompt for p in read_pairs(tmp_path / "ds")] == [f"a shape {n}" for n in range(30)]


def test_shards_may_sit_at_the_root_or_in_nested_folders(tmp_path: Path) -> None:
    files = shard_files(pick_rows(6), 2, folder="") | shard_files(pick_rows(6, start=6), 2, folder="b/c/")
    upload = make_zip(tmp_path / "shards.zip", files)

    assert ingest(upload, tmp_path / "ds").num_pairs == 12
    # "b/c/train-..." sorts before "train-...": name order, folders included.
    assert read_pairs(tmp_path / "ds")[0].prompt == "a shape 6"


def test_hidden_files_beside_the_shards_are_ignored(tmp_path: Path) -> None:
    files = shard_files(pick_rows(4), 2) | {".DS_Store": b"\0\1", "data/._train-00000-of-00002.parquet": b"x"}
    report = ingest(make_zip(tmp_path / "shards.zip", files), tmp_path / "ds")

    assert report.num_pairs == 4


@pytest.mark.parametrize("kind", ["targets", "avoid"])
def test_targets_shards_give_a_targets_dataset(tmp_path: Path, kind: DatasetKind) -> None:
    upload = make_zip(tmp_path / "shards.zip", shard_files(target_rows(9), 3, TARGETS_GENERATION_SCHEMA))

    report = ingest(upload, tmp_path / "ds", kind=kind)

    assert (report.kind, report.num_pairs) == (kind, 9)
    rows = read_targets(tmp_path / "ds")
    assert [(r.prompt, r.generation_prompt) for r in rows] == [
        (f"a warm shape {n}", f"a shape {n}") for n in range(9)
    ]
    assert all(is_warm(tmp_path / "ds" / row.image) for row in rows)


def test_ties_are_dropped_and_counted_across_shards(tmp_path: Path) -> None:
    rows = pick_rows(12)
    for n in (1, 5, 10):  # one tie in each shard of four rows
        rows[n] = rows[n] | {"label_0": 0.5, "label_1": 0.5}
    upload = make_zip(tmp_path / "shards.zip", shard_files(rows, 3))

    report = ingest(upload, tmp_path / "ds")

    assert (report.num_pairs, report.dropped_ties) == (9, 3)
    assert [p.prompt for p in read_pairs(tmp_path / "ds")] == [
        f"a shape {n}" for n in range(12) if n not in (1, 5, 10)
    ]


@pytest.mark.parametrize("container", ARCHIVES)
def test_empty_shards_add_no_rows(tmp_path: Path, container: str) -> None:
    files = {
        shard_name(0, 3): parquet_bytes(pick_rows(3)),
        shard_name(1, 3): parquet_bytes([]),
        shard_name(2, 3): parquet_bytes(pick_rows(2, start=3)),
    }
    report = ingest(archive(tmp_path / "shards.tar.gz", container, files), tmp_path / "ds")

    assert report.num_pairs == 5
    assert [p.prompt for p in read_pairs(tmp_path / "ds")] == [f"a shape {n}" for n in range(5)]


def test_shards_that_are_all_empty_have_no_valid_pairs(tmp_path: Path) -> None:
    files = {shard_name(i, 2): parquet_bytes([]) for i in range(2)}
    problems = rejection(make_zip(tmp_path / "shards.zip", files), tmp_path / "ds")

    assert [p.reason for p in problems] == ["no valid pairs"]


# --- problems name the global row, the field and the shard ------------------------------------------------


@pytest.mark.parametrize("container", ARCHIVES)
def test_a_bad_row_in_the_second_shard_names_the_global_row_its_field_and_its_shard(
    tmp_path: Path, container: str
) -> None:
    rows = pick_rows(12)
    rows[6] = rows[6] | {"jpg_1": b"not an image"}  # the third row of the second shard of four rows
    rows[5] = rows[5] | {"caption": " "}
    upload = archive(tmp_path / "shards.tar.gz", container, shard_files(rows, 3))

    problems = rejection(upload, tmp_path / "ds")

    assert where(problems) == {(5, "caption"), (6, "jpg_1")}
    second = shard_name(1, 3)
    assert all(f"shard {second!r}" in p.reason for p in problems)
    assert "its row 1" in problems[0].reason and "its row 2" in problems[1].reason


def test_problems_of_every_shard_are_listed_not_only_the_first_shards(tmp_path: Path) -> None:
    rows = pick_rows(8)
    rows[1] = rows[1] | {"label_0": float("nan")}
    rows[6] = rows[6] | {"label_1": None}
    problems = rejection(make_zip(tmp_path / "shards.zip", shard_files(rows, 2)), tmp_path / "ds")

    assert where(problems) == {(1, "label_0"), (6, "label_1")}


def test_a_shard_missing_a_column_is_named(tmp_path: Path) -> None:
    files = shard_files(pick_rows(4), 2)
    files[shard_name(1, 2)] = parquet_bytes(
        [{"caption": "x", "jpg_0": b"", "jpg_1": b""}], PICK_SCHEMA.remove(4).remove(3)
    )
    problems = rejection(make_zip(tmp_path / "shards.zip", files), tmp_path / "ds")

    assert where(problems) == {(None, "label_0"), (None, "label_1")}
    assert all("missing column" in p.reason and shard_name(1, 2) in p.reason for p in problems)


@pytest.mark.parametrize("container", ARCHIVES)
@pytest.mark.parametrize("content", [b"PK\3\4 a zip in disguise", b""])
def test_a_member_named_parquet_that_is_not_parquet_is_refused_by_name(
    tmp_path: Path, container: str, content: bytes
) -> None:
    files = shard_files(pick_rows(4), 2) | {"data/train-00002-of-00002.parquet": content}
    problems = rejection(archive(tmp_path / "shards.tar.gz", container, files), tmp_path / "ds")

    assert len(problems) == 1
    assert "'data/train-00002-of-00002.parquet'" in problems[0].reason
    assert "not a readable parquet file" in problems[0].reason


def test_an_archive_mixing_shards_with_other_files_is_refused(tmp_path: Path) -> None:
    files = shard_files(pick_rows(4), 2) | {"README.md": b"# my dataset", "images/0.png": png(WARM)}
    problems = rejection(make_zip(tmp_path / "shards.zip", files), tmp_path / "ds")

    assert len(problems) == 1
    assert "parquet" in problems[0].reason and "'README.md'" in problems[0].reason


def test_a_trigger_word_is_refused_as_with_one_parquet(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "shards.zip", shard_files(target_rows(4), 2, TARGETS_GENERATION_SCHEMA))
    problems = rejection(upload, tmp_path / "ds", kind="targets", trigger_word="sks")

    assert where(problems) == {(None, "trigger_word")}
    assert "parquet shards" in problems[0].reason


# --- byte budgets ------------------------------------------------------------------------------------------


def test_shards_over_the_byte_budget_together_are_refused_though_each_is_under_it(tmp_path: Path) -> None:
    # Images stored uncompressed in PNG but compressed by the parquet codec: small shard files (the archive
    # is far under the budget) whose parquet data is large.
    rows = [
        row | {"jpg_0": uncompressed_png(64, (n, 0, 0)), "jpg_1": uncompressed_png(64, (0, 0, n))}
        for n, row in enumerate(pick_rows(24))
    ]
    files = {shard_name(i, 3): parquet_bytes(rows[8 * i : 8 * i + 8], compression="zstd") for i in range(3)}
    shard_data = 8 * 2 * len(uncompressed_png(64))
    assert sum(len(data) for data in files.values()) < shard_data / 10
    limits = IngestLimits(max_uncompressed_bytes=int(2.5 * shard_data))

    problems = rejection(make_zip(tmp_path / "shards.zip", files), tmp_path / "ds", limits=limits)

    assert len(problems) == 1
    assert shard_name(2, 3) in problems[0].reason and str(limits.max_uncompressed_bytes) in problems[0].reason


@pytest.mark.parametrize("container", ARCHIVES)
def test_a_shard_declaring_less_than_it_decodes_to_is_refused(tmp_path: Path, container: str) -> None:
    # Every row holds the same large image: the dictionary encoding declares it once, decoding it repeats it.
    image = uncompressed_png(64)
    rows = [row | {"jpg_0": image, "jpg_1": image} for row in pick_rows(64)]
    files = {shard_name(i, 3): parquet_bytes(pick_rows(2, start=2 * i)) for i in range(2)}
    files[shard_name(2, 3)] = parquet_bytes(rows, compression="zstd")
    limits = IngestLimits(max_uncompressed_bytes=40 * len(image))

    problems = rejection(
        archive(tmp_path / "shards.tar.gz", container, files), tmp_path / "ds", limits=limits
    )

    assert len(problems) == 1
    assert shard_name(2, 3) in problems[0].reason and "expand to more than" in problems[0].reason


@pytest.mark.parametrize("container", ARCHIVES)
def test_shards_that_each_understate_their_data_are_held_to_one_budget_together(
    tmp_path: Path, container: str
) -> None:
    # Each shard repeats one large image (declared once by the dictionary encoding, decoded 16 times) and
    # decodes to under the budget, but the three of them together are over it: the decoded bytes of all
    # the shards count against one budget, not each shard against what the declarations left.
    image = uncompressed_png(64)
    rows = [row | {"jpg_0": image, "jpg_1": image} for row in pick_rows(16)]
    files = {shard_name(i, 3): parquet_bytes(rows, compression="zstd") for i in range(3)}
    limits = IngestLimits(max_uncompressed_bytes=48 * len(image))

    problems = rejection(
        archive(tmp_path / "shards.tar.gz", container, files), tmp_path / "ds", limits=limits
    )

    assert len(problems) == 1
    assert shard_name(1, 3) in problems[0].reason and "expand to more than" in problems[0].reason


# --- one shard at a time -----------------------------------------------------------------------------------


def test_each_shard_is_deleted_from_scratch_before_the_next_is_read(tmp_path: Path) -> None:
    index = MemberIndex(tmp_path / "scratch")
    index.scratch.mkdir()
    names = [shard_name(i, 3) for i in range(3)]
    seen: list[Path] = []

    def shards() -> Iterator[tuple[str, Path]]:
        for i, name in enumerate(names):
            assert all(not path.exists() for path in seen), "an earlier shard is still in scratch"
            index.accept(name, 0)
            index.store(
                name, io.BytesIO(parquet_bytes(pick_rows(2, start=2 * i))), declared=1 << 20, budget=None
            )
            seen.append(index.files[name])
            yield name, index.files[name]

    with DatasetWriter(tmp_path / "ds") as writer:
        collector = PairCollector(writer, IngestLimits())
        ingest_parquet_shards(shards(), index, collector)
        assert collector.finish("zip").num_pairs == 6
    assert list(index.scratch.iterdir()) == []


def allocation_peak(upload: Path, dest: Path) -> int:
    """The most bytes of Python objects alive at once while `upload` is ingested."""
    tracemalloc.start()
    try:
        ingest(upload, dest)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("container", ARCHIVES)
def test_memory_stays_flat_whatever_the_number_of_shards(tmp_path: Path, container: str) -> None:
    # Distinct noisy images (~7 KB each): 4 x the rows would show as 4 x the peak if rows were kept.
    images = [noisy_png(seed) for seed in range(64)]
    rows = [
        row | {"jpg_0": images[n % 64], "jpg_1": images[(n + 1) % 64]} for n, row in enumerate(pick_rows(384))
    ]
    rows_per_shard = 48
    uploads = {
        count: archive(
            tmp_path / f"{count}.tar.gz",
            container,
            {
                shard_name(i, count): parquet_bytes(rows[i * rows_per_shard : (i + 1) * rows_per_shard])
                for i in range(count)
            },
        )
        for count in (2, 8)
    }

    two, eight = (allocation_peak(uploads[count], tmp_path / f"ds{count}") for count in (2, 8))

    assert read_pairs(tmp_path / "ds8")[-1].prompt == "a shape 383"
    data = rows_per_shard * 2 * 7000  # about one shard's images
    assert eight < two + data, (two, eight)


# --- through the API ---------------------------------------------------------------------------------------


def test_a_zip_of_shards_uploads_as_a_dataset_and_a_bad_one_is_a_422(
    client: TestClient, session: Session
) -> None:
    headers = auth_headers(session)
    good = zip_bytes(shard_files(pick_rows(10), 3))
    bad_rows = pick_rows(10)
    bad_rows[5] = bad_rows[5] | {"jpg_0": None}

    made = client.post("/v1/datasets", files={"file": ("hf.zip", good)}, headers=headers)
    refused = client.post(
        "/v1/datasets", files={"file": ("hf.zip", zip_bytes(shard_files(bad_rows, 3)))}, headers=headers
    )

    assert made.status_code == 201, made.text
    assert (made.json()["num_pairs"], made.json()["kind"]) == (10, "pairs")
    assert refused.status_code == 422
    problems = refused.json()["error"]["problems"]
    assert [(p["row"], p["field"]) for p in problems] == [(5, "jpg_0")]
    assert shard_name(1, 3) in problems[0]["reason"]


def test_a_tar_gz_of_shards_sent_in_resumable_parts_becomes_a_dataset(
    client: TestClient, session: Session
) -> None:
    headers = auth_headers(session)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in shard_files(pick_rows(8), 4).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    payload = out.getvalue()
    tus = {"Tus-Resumable": "1.0.0"}
    meta = f"filename {base64.b64encode(b'hf.tar.gz').decode()}"
    created = client.post(
        "/v1/uploads", headers={**headers, **tus, "Upload-Length": str(len(payload)), "Upload-Metadata": meta}
    )
    upload_id = created.json()["id"]
    part = {**headers, **tus, "Content-Type": "application/offset+octet-stream"}
    cut = len(payload) // 2
    for offset, data in ((0, payload[:cut]), (cut, payload[cut:])):
        sent = client.patch(
            f"/v1/uploads/{upload_id}", content=data, headers={**part, "Upload-Offset": str(offset)}
        )
        assert sent.status_code == 204, sent.text

    made = client.post(f"/v1/uploads/{upload_id}/dataset", json={"name": "hf shards"}, headers=headers)

    assert made.status_code == 201, made.text
    assert (made.json()["name"], made.json()["num_pairs"]) == ("hf shards", 8)
