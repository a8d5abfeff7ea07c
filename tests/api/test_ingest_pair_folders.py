"""Pair folders (`w/x.png` chosen, `l/x.png` rejected, captioned by `x.txt` or captions.jsonl) as a pairs
upload."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from api.services.ingest import IngestRejected, IngestReport, Problem, ingest_upload
from tests.support.archives import COOL, WARM, is_warm, make_tar, make_zip, png
from trainer.dataset_format import read_pairs

MakeArchive = Callable[[Path, dict[str, bytes]], Path]


def ingest(upload: Path, dest: Path) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, kind="pairs")


def rejection(upload: Path, dest: Path) -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest(upload, dest)
    assert not dest.exists()  # nothing half-written
    return caught.value.problems


def folders(names: list[str], prefix: str = "") -> dict[str, bytes]:
    """A warm chosen and a cool rejected image for each name, captioned by <stem>.txt."""
    files: dict[str, bytes] = {}
    for name in names:
        files[f"{prefix}w/{name}"], files[f"{prefix}l/{name}"] = png(WARM), png(COOL)
        files[f"{prefix}{name.rsplit('.', 1)[0]}.txt"] = f"a warm {name}".encode()
    return files


# --- valid uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_pair_folders_with_txt_captions_become_pairs(tmp_path: Path, make: MakeArchive) -> None:
    upload = make(tmp_path / "up.bin", folders(["b.png", "a.png"]))

    report = ingest(upload, tmp_path / "ds")

    assert (report.kind, report.num_pairs) == ("pairs", 2)
    pairs = read_pairs(tmp_path / "ds")
    assert [p.prompt for p in pairs] == ["a warm a.png", "a warm b.png"]
    assert all(
        is_warm(tmp_path / "ds" / p.chosen) and not is_warm(tmp_path / "ds" / p.rejected) for p in pairs
    )


def test_captions_jsonl_in_a_single_top_level_folder(tmp_path: Path) -> None:
    files = {"set/w/x.png": png(WARM), "set/l/x.jpg": b"", "set/w/sub/y.png": png(WARM)}
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), COOL).save(buffer, "JPEG")
    files |= {"set/l/x.jpg": buffer.getvalue(), "set/l/sub/y.png": png(COOL)}
    captions = [{"file_name": "x.png", "caption": "an x"}, {"file_name": "w/sub/y.png", "caption": "a y"}]
    files["set/captions.jsonl"] = "".join(json.dumps(c) + "\n" for c in captions).encode()

    ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    pairs = read_pairs(tmp_path / "ds")
    assert [(p.prompt, p.rejected.rsplit(".", 1)[-1]) for p in pairs] == [("a y", "png"), ("an x", "jpg")]


def test_a_pairs_manifest_wins_over_pair_folders(tmp_path: Path) -> None:
    files = folders(["a.png"])
    files["pairs.jsonl"] = b'{"prompt": "from the manifest", "chosen": "l/a.png", "rejected": "w/a.png"}\n'
    ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    [pair] = read_pairs(tmp_path / "ds")
    assert pair.prompt == "from the manifest" and not is_warm(tmp_path / "ds" / pair.chosen)


# --- problems ------------------------------------------------------------------------------------------


def test_a_chosen_image_without_its_rejected_twin_names_the_file(tmp_path: Path) -> None:
    files = folders(["a.png", "b.png"])
    del files["l/b.png"]
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(1, "l")] and "'w/b.png'" in problems[0].reason


def test_a_rejected_image_without_its_chosen_twin_names_the_file(tmp_path: Path) -> None:
    files = folders(["a.png"]) | {"l/z.png": png(COOL)}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(None, "w")] and "'l/z.png'" in problems[0].reason


def test_a_pair_without_a_caption_names_the_file(tmp_path: Path) -> None:
    files = folders(["a.png", "b.png"])
    del files["b.txt"]
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(1, "caption")] and "'b.txt'" in problems[0].reason


def test_captions_jsonl_problems_name_its_rows(tmp_path: Path) -> None:
    files = {"w/a.png": png(WARM), "l/a.png": png(COOL), "w/b.png": png(WARM), "l/b.png": png(COOL)}
    lines = [{"file_name": "a.png", "caption": "an a"}, {"file_name": "nope.png", "caption": "?"}]
    lines += [{"file_name": "a.png", "caption": "again"}, {"caption": "no file"}]
    files["captions.jsonl"] = "".join(json.dumps(line) + "\n" for line in lines).encode()
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    found = {(p.row, p.field): p.reason for p in problems}
    assert set(found) == {(1, "file_name"), (2, "file_name"), (3, "file_name"), (1, "caption")}
    assert "'nope.png'" in found[1, "file_name"] and "twice" in found[2, "file_name"]
    assert "'w/b.png'" in found[1, "caption"]  # pair row 1 (b) has no caption


def test_bad_images_and_stray_files_are_reported_together(tmp_path: Path) -> None:
    files = folders(["a.png", "b.png"]) | {
        "w/b.png": b"not a png",
        "l/readme.md": b"hi",
        "w/.DS_Store": b"\0",
    }
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert {(p.row, p.field) for p in problems} == {(None, "l"), (1, "w")}


def test_pairs_archive_with_neither_manifest_nor_folders_is_refused(tmp_path: Path) -> None:
    problems = rejection(make_zip(tmp_path / "up.zip", {"w/a.png": png(WARM)}), tmp_path / "ds")
    assert "w/ and l/" in problems[0].reason


# --- hostile archives ----------------------------------------------------------------------------------


def test_symlinked_twin_and_traversal_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("l/a.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = {"w/a.png": png(WARM), "a.txt": b"an a", "w/../../x.png": png(WARM)}
    problems = rejection(make_tar(tmp_path / "up.tgz", files, extra=(link,)), tmp_path / "ds")
    reasons = " ".join(p.reason for p in problems)
    assert "'l/a.png' is a symbolic link" in reasons and "'w/../../x.png'" in reasons
    assert (0, "l") in {(p.row, p.field) for p in problems}


def test_a_huge_caption_file_is_refused_by_its_declared_size_unread(tmp_path: Path) -> None:
    # Its bytes fail their CRC: were it extracted, the upload would stop as a corrupt archive.
    upload = tmp_path / "up.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("w/a.png", png(WARM))
        archive.writestr("l/a.png", png(COOL))
        archive.writestr("a.txt", b"CAPTION-" + b"x" * 50_000)
    upload.write_bytes(upload.read_bytes().replace(b"CAPTION-", b"CORRUPT-"))
    problems = rejection(upload, tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(0, "caption")] and "longer" in problems[0].reason


def test_the_manifest_of_an_uncaptioned_upload_is_written_as_before(tmp_path: Path) -> None:
    # Workers of the release before captions read manifests strictly: a new key would break them.
    ingest(make_zip(tmp_path / "up.zip", folders(["a.png"])), tmp_path / "ds")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert set(manifest) == {"format", "version", "kind", "num_pairs", "pairs_file"}


def test_two_images_of_one_name_in_a_folder_are_one_problem(tmp_path: Path) -> None:
    files = folders(["a.png"]) | {"w/a.webp": png(WARM)}
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert [(p.row, p.field) for p in problems] == [(None, "w")]
    assert "'w/a.png' and 'w/a.webp' have the same name" in problems[0].reason
