"""Images with same-name caption files (`cat1.png` + `cat1.txt`) as a targets upload, with a trigger word."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from api.services.ingest import IngestRejected, IngestReport, Problem, ingest_upload
from tests.support.archives import make_tar, make_zip, png
from trainer.dataset_format import read_manifest, read_targets

MakeArchive = Callable[[Path, dict[str, bytes]], Path]


def ingest(upload: Path, dest: Path, trigger_word: str | None = None) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, kind="targets", trigger_word=trigger_word)


def rejection(upload: Path, dest: Path, trigger_word: str | None = None) -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest(upload, dest, trigger_word)
    assert not dest.exists()  # nothing half-written
    return caught.value.problems


def prompts(dest: Path) -> list[tuple[str, str | None]]:
    return [(row.prompt, row.generation_prompt) for row in read_targets(dest)]


# --- valid uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_captioned_images_become_targets_rows_in_name_order(tmp_path: Path, make: MakeArchive) -> None:
    files = {"cat2.png": png(), "cat2.txt": b"a cat asleep\n", "cat1.png": png(), "cat1.txt": b"a cat"}
    upload = make(tmp_path / "up.bin", files)

    report = ingest(upload, tmp_path / "ds")

    assert (report.kind, report.num_pairs, report.captions_missing) == ("targets", 2, 0)
    assert read_manifest(tmp_path / "ds").kind == "targets"
    assert prompts(tmp_path / "ds") == [("a cat", None), ("a cat asleep", None)]


def test_trigger_word_goes_where_the_caption_asks_and_the_base_model_draws_without_it(
    tmp_path: Path,
) -> None:
    files = {
        "a.png": png(),
        "a.txt": b"a photo of [trigger] dog",
        "b.png": png(),
        "b.txt": b"a dog on grass",
        "c.png": png(),
        "c.txt": b"sks dog, by the sea",  # already in place, as a word
        "d.png": png(),
        "d.txt": b"a sksdog",  # not as a word
    }
    ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", trigger_word="sks")

    assert prompts(tmp_path / "ds") == [
        ("a photo of sks dog", "a photo of dog"),
        ("sks a dog on grass", "a dog on grass"),
        ("sks dog, by the sea", "dog, by the sea"),
        ("sks a sksdog", "a sksdog"),
    ]


def test_images_without_captions_train_on_the_trigger_word_alone_and_are_counted(tmp_path: Path) -> None:
    files = {"sub/a.png": png(), "sub/a.txt": b"a dog", "sub/b.png": png(), "c.webp": png(), "c.txt": b" "}
    report = ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", trigger_word="sks")

    assert (report.num_pairs, report.captions_missing) == (3, 2)
    assert read_manifest(tmp_path / "ds").captions_missing == 2
    assert prompts(tmp_path / "ds") == [("sks", ""), ("sks a dog", "a dog"), ("sks", "")]


def test_hidden_files_and_other_files_are_not_rows(tmp_path: Path) -> None:
    files = {"a.png": png(), "a.txt": b"a dog", ".DS_Store": b"\0", "._a.png": b"junk", "notes.md": b"hi"}
    report = ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert report.num_pairs == 1


def test_a_pairs_manifest_wins_over_captions(tmp_path: Path) -> None:
    files = {"pairs.jsonl": b'{"prompt": "from the manifest", "image": "a.png"}\n', "a.png": png()}
    files |= {"a.txt": b"from the caption"}
    ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert prompts(tmp_path / "ds") == [("from the manifest", None)]


# --- problems ------------------------------------------------------------------------------------------


def test_missing_caption_without_a_trigger_word_names_row_file_and_field(tmp_path: Path) -> None:
    files = {"a.png": png(), "a.txt": b"a dog", "b.png": png()}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(1, "caption")]
    assert "'b.png'" in problems[0].reason and "'b.txt'" in problems[0].reason


def test_trigger_placeholder_without_a_trigger_word_is_refused(tmp_path: Path) -> None:
    files = {"a.png": png(), "a.txt": b"a photo of [trigger] dog"}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(0, "caption")] and "[trigger]" in problems[0].reason


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    files = {
        "a.png": b"not an image",
        "a.txt": b"a dog",
        "b.png": png(),
        "b.txt": b"\xff\xfe not utf-8",
        "c.png": png(),
        "c.txt": b"x" * 50_000,
        "stray.txt": b"an image that was renamed",
    }
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", trigger_word="sks")
    found = {(p.row, p.field): p.reason for p in problems}
    assert set(found) == {(None, "caption"), (0, "image"), (1, "caption"), (2, "caption")}
    assert "'stray.txt'" in found[None, "caption"] and "'a.png'" in found[0, "image"]
    assert "UTF-8" in found[1, "caption"] and "longer" in found[2, "caption"]


def test_trigger_word_is_refused_for_a_manifest_upload(tmp_path: Path) -> None:
    files = {"pairs.jsonl": b'{"prompt": "a dog", "image": "a.png"}\n', "a.png": png()}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", trigger_word="sks")
    assert [(p.row, p.field) for p in problems] == [(None, "trigger_word")]


def test_an_archive_without_images_or_manifest_is_refused(tmp_path: Path) -> None:
    problems = rejection(make_zip(tmp_path / "up.zip", {"a.txt": b"a dog"}), tmp_path / "ds")
    assert "images with .txt captions" in problems[0].reason


def test_pair_folders_are_not_read_as_captioned_targets(tmp_path: Path) -> None:
    files = {"w/a.png": png(), "l/a.png": png(), "a.txt": b"a dog"}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert "kind=pairs" in problems[0].reason


# --- hostile archives ----------------------------------------------------------------------------------


def test_symlinked_caption_and_traversing_image_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("a.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = {"a.png": png(), "../escape.png": png()}
    problems = rejection(make_tar(tmp_path / "up.tgz", files, extra=(link,)), tmp_path / "ds", "sks")
    reasons = " ".join(p.reason for p in problems)
    assert "'../escape.png'" in reasons and "'a.txt' is a symbolic link" in reasons
    assert (0, "caption") in {(p.row, p.field) for p in problems}  # its caption was refused, not missing


def test_only_images_and_their_captions_are_extracted(tmp_path: Path) -> None:
    # A member no row reads is never inflated: one failing its CRC would stop the upload if it were.
    upload = tmp_path / "up.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as archive:
        for name, data in {"a.png": png(), "a.txt": b"a dog", "notes.bin": b"ORIGINAL-BYTES"}.items():
            archive.writestr(name, data)
    upload.write_bytes(upload.read_bytes().replace(b"ORIGINAL-BYTES", b"CORRUPT!-BYTES"))
    with zipfile.ZipFile(upload) as archive:
        assert archive.testzip() == "notes.bin"  # the corruption is real

    assert ingest(upload, tmp_path / "ds").num_pairs == 1


@pytest.mark.parametrize("folder", ["", "shoot/"])
def test_a_caption_folder_sent_as_pairs_is_told_to_send_kind_targets(tmp_path: Path, folder: str) -> None:
    files = {f"{folder}cat1.png": png(), f"{folder}cat1.txt": b"a cat", f"{folder}cat2.png": png()}
    upload = make_zip(tmp_path / "up.zip", files)
    with pytest.raises(IngestRejected) as caught:
        ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")
    [problem] = caught.value.problems
    assert problem.reason.startswith("this looks like a caption folder"), problem.reason
    assert "send kind=targets (and trigger_word" in problem.reason


def test_images_without_captions_sent_as_pairs_are_not_called_a_caption_folder(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "up.zip", {"cat1.png": png(), "notes.txt": b"not a caption"})
    with pytest.raises(IngestRejected) as caught:
        ingest_upload(upload, upload.name, tmp_path / "ds", kind="pairs")
    [problem] = caught.value.problems
    assert "nor folders w/ and l/" in problem.reason and "caption folder" not in problem.reason


def test_captioned_images_are_not_an_avoid_upload(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "up.zip", {"a.png": png(), "a.txt": b"a dog"})
    with pytest.raises(IngestRejected) as caught:
        ingest_upload(upload, upload.name, tmp_path / "ds", kind="avoid")
    [problem] = caught.value.problems
    assert "pairs.jsonl" in problem.reason and "captions" not in problem.reason


def test_a_huge_caption_file_is_refused_by_its_declared_size_unread(tmp_path: Path) -> None:
    # Its bytes fail their CRC: were it extracted, the upload would stop as a corrupt archive.
    upload = tmp_path / "up.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.png", png())
        archive.writestr("a.txt", b"CAPTION-" + b"x" * 50_000)
    upload.write_bytes(upload.read_bytes().replace(b"CAPTION-", b"CORRUPT-"))
    problems = rejection(upload, tmp_path / "ds", trigger_word="sks")
    assert [(p.row, p.field) for p in problems] == [(0, "caption")] and "longer" in problems[0].reason
