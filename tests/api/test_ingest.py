"""Dataset uploads: real zip, tar(.gz) and parquet files, built in tmp_path and ingested for real."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from pathlib import Path

import pytest

from api.services.ingest import IngestLimits, IngestRejected, IngestReport, Problem, ingest_upload
from tests.support.archives import (
    COOL,
    PICK_SCHEMA,
    WARM,
    is_warm,
    jsonl,
    make_parquet,
    make_tar,
    make_zip,
    pair_row,
    png,
    valid_files,
)
from tests.support.io_counters import written_bytes
from tests.support.problems import where
from trainer.dataset_format import MANIFEST_FILE, read_pairs
from trainer.synthetic.demo_data import demo_pairs, write_demo_upload


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels: a decompression bomb's calling card."""
    data = bytearray(png(size=(1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def bomb_zip(path: Path, *, members: int, member_bytes: int, files: dict[str, bytes]) -> Path:
    """A zip of `files` and then `members` members of `member_bytes` zeros, written by hand: the zeros are
    deflated once and that stream reused, so a 6 GB bomb builds in a second (zipfile takes a minute)."""
    zeros = bytes(member_bytes)
    junk = (raw_deflate(zeros), zlib.crc32(zeros), member_bytes)
    entries = [(name, (raw_deflate(data), zlib.crc32(data), len(data))) for name, data in files.items()]
    entries += [(f"junk/{i:05d}.bin", junk) for i in range(members)]
    central = b""
    with path.open("wb") as out:
        for name, (packed, crc, size) in entries:
            encoded, offset = name.encode(), out.tell()
            common = struct.pack("<HHHHIIIH", 0, 8, 0, 0x21, crc, len(packed), size, len(encoded))
            out.write(struct.pack("<IH", 0x04034B50, 20) + common + struct.pack("<H", 0) + encoded + packed)
            central += struct.pack("<IHH", 0x02014B50, 20, 20) + common
            central += struct.pack("<HHHHII", 0, 0, 0, 0, 0, offset) + encoded
        start = out.tell()
        out.write(central)
        out.write(
            struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0)
        )
    return path


def tar_member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf()


def bomb_tar_gz(path: Path, *, members: int, member_bytes: int, files: dict[str, bytes]) -> Path:
    """A .tar.gz of `members` members of `member_bytes` zeros, then `files`, as gzip members written one
    after another (gzip readers see one stream): the zeros are compressed once and that member reused."""
    assert member_bytes % tarfile.BLOCKSIZE == 0
    zeros = gzip.compress(bytes(member_bytes))
    rest = b"".join(tar_member(n, len(d)) + d + bytes(-len(d) % tarfile.BLOCKSIZE) for n, d in files.items())
    with path.open("wb") as out:
        for i in range(members):
            out.write(gzip.compress(tar_member(f"junk/{i:05d}.bin", member_bytes)) + zeros)
        out.write(gzip.compress(rest + bytes(2 * tarfile.BLOCKSIZE)))
    return path


def ingest(upload: Path, dest: Path, limits: IngestLimits | None = None) -> IngestReport:
    return ingest_upload(upload, upload.name, dest, limits=limits or IngestLimits())


def rejection(upload: Path, dest: Path, limits: IngestLimits | None = None) -> list[Problem]:
    with pytest.raises(IngestRejected) as caught:
        ingest(upload, dest, limits)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == [], "staging left behind"
    return caught.value.problems


# --- valid uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), [("zip", "demo.zip"), ("tar", "demo.tar.gz"), ("tar", "demo.tar")])
def test_archive_round_trips_to_the_canonical_layout(tmp_path: Path, kind: str, name: str) -> None:
    upload = write_demo_upload(tmp_path / name, kind=kind, num_pairs=7, resolution=32, seed=3)  # type: ignore[arg-type]
    report = ingest(upload, tmp_path / "ds")

    assert report.num_pairs == 7 and report.dropped_ties == 0
    assert report.source_format == ("zip" if kind == "zip" else "tar")
    originals = list(demo_pairs(num_pairs=7, resolution=32, seed=3))
    assert [p.prompt for p in report.preview] == [o.prompt for o in originals[:5]]
    pairs = read_pairs(tmp_path / "ds")
    for pair, original in zip(pairs, originals, strict=True):
        assert pair.prompt == original.prompt
        assert (tmp_path / "ds" / pair.chosen).read_bytes() == original.chosen
        assert (tmp_path / "ds" / pair.rejected).read_bytes() == original.rejected
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_image_that_two_rows_share_is_stored_for_each(tmp_path: Path) -> None:
    rows = [{"prompt": f"pair {i}", "chosen": "images/w.png", "rejected": f"images/{i}.png"} for i in (0, 1)]
    files = {"pairs.jsonl": jsonl(rows), "images/w.png": png(WARM)}
    files |= {f"images/{i}.png": png((40 + i, 80, 220)) for i in (0, 1)}
    ingest(make_zip(tmp_path / "shared.zip", files), tmp_path / "ds")

    pairs = read_pairs(tmp_path / "ds")
    assert [(tmp_path / "ds" / p.chosen).read_bytes() for p in pairs] == [png(WARM), png(WARM)]
    assert [(tmp_path / "ds" / p.rejected).read_bytes() for p in pairs] == [
        png((40, 80, 220)),
        png((41, 80, 220)),
    ]
    assert len({p.chosen for p in pairs}) == 2  # each row has a file of its own in the dataset


def test_parquet_labels_decide_which_image_is_chosen(tmp_path: Path) -> None:
    upload = write_demo_upload(tmp_path / "pick.parquet", kind="parquet", num_pairs=6, resolution=32)
    report = ingest(upload, tmp_path / "ds")

    assert report.num_pairs == 6 and report.source_format == "parquet"
    for pair in read_pairs(tmp_path / "ds"):
        assert pair.chosen.endswith(".jpg")
        assert is_warm(tmp_path / "ds" / pair.chosen) and not is_warm(tmp_path / "ds" / pair.rejected)


def test_parquet_ties_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        {"caption": "tie", "jpg_0": png(WARM), "jpg_1": png(COOL), "label_0": 0.5, "label_1": 0.5},
        {"caption": "first wins", "jpg_0": png(WARM), "jpg_1": png(COOL), "label_0": 1.0, "label_1": 0.0},
        {"caption": "second wins", "jpg_0": png(COOL), "jpg_1": png(WARM), "label_0": 0.0, "label_1": 1.0},
    ]
    report = ingest(make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA), tmp_path / "ds")

    assert (report.num_pairs, report.dropped_ties) == (2, 1)
    pairs = read_pairs(tmp_path / "ds")
    assert [p.prompt for p in pairs] == ["first wins", "second wins"]
    assert all(is_warm(tmp_path / "ds" / p.chosen) for p in pairs)


def test_parquet_of_only_ties_has_no_valid_pairs(tmp_path: Path) -> None:
    rows = [{"caption": "tie", "jpg_0": png(), "jpg_1": png(COOL), "label_0": 0.5, "label_1": 0.5}] * 3
    problems = rejection(make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA), tmp_path / "ds")

    assert [p.reason for p in problems] == ["no valid pairs (3 ties dropped)"]


def test_csv_manifest_inside_a_single_top_level_folder(tmp_path: Path) -> None:
    csv_text = 'prompt,chosen,rejected\n"a cat, sitting\non two lines",a.png,b.png\n\nsecond,b.png,a.png\n'
    files = {"export/pairs.csv": csv_text.encode(), "export/a.png": png(WARM), "export/b.png": png(COOL)}
    report = ingest(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert report.num_pairs == 2
    pairs = read_pairs(tmp_path / "ds")
    assert pairs[0].prompt == "a cat, sitting\non two lines"
    assert is_warm(tmp_path / "ds" / pairs[0].chosen) and not is_warm(tmp_path / "ds" / pairs[1].chosen)


def test_unicode_member_names_and_prompts(tmp_path: Path) -> None:
    name = "images/猫 café Ünïcode 🎨.png"
    decomposed = unicodedata.normalize("NFD", name)  # as macOS writes names into zips
    rows = [{"prompt": "ein Kätzchen 🐱", "chosen": name, "rejected": "images/ß.png"}]
    files = {"pairs.jsonl": jsonl(rows), decomposed: png(WARM), "images/ß.png": png(COOL)}

    for upload in (make_zip(tmp_path / "ü.zip", files), make_tar(tmp_path / "ü.tar.gz", files)):
        dest = tmp_path / f"ds-{upload.suffix}"
        assert ingest(upload, dest).num_pairs == 1
        assert read_pairs(dest)[0].prompt == "ein Kätzchen 🐱"


def test_content_decides_the_kind_not_the_name(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "looks-like.parquet", valid_files())
    assert ingest(upload, tmp_path / "ds").source_format == "zip"


# --- problems, each with row and field ---------------------------------------------------------------------


def test_every_row_problem_is_reported_with_row_and_field(tmp_path: Path) -> None:
    files = valid_files(1)
    truncated = png(size=(64, 64))[:-30]
    files.update({"images/junk.png": b"definitely not an image", "images/cut.png": truncated})
    rows: list[dict[str, object]] = [
        pair_row(0),
        {"prompt": "missing file", "chosen": "images/nope.png", "rejected": "images/0_c.png"},
        {"prompt": "junk", "chosen": "images/0_w.png", "rejected": "images/junk.png"},
        {"prompt": "   ", "chosen": "images/0_w.png", "rejected": "images/0_c.png"},
        {"prompt": "no rejected key", "chosen": "images/0_w.png"},
        {"prompt": "cut", "chosen": "images/cut.png", "rejected": "images/0_c.png"},
    ]
    files["pairs.jsonl"] = jsonl(rows)
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(1, "chosen"), (2, "rejected"), (3, "prompt"), (4, "rejected"), (5, "chosen")}
    reasons = {(p.row, p.field): p.reason for p in problems}
    assert "not in the archive" in reasons[(1, "chosen")]
    assert "not a PNG, JPEG or WebP" in reasons[(2, "rejected")]
    assert reasons[(3, "prompt")] == "prompt is empty"
    assert reasons[(4, "rejected")] == "missing"
    assert "does not decode" in reasons[(5, "chosen")]


def test_invalid_json_line_is_reported_with_its_row(tmp_path: Path) -> None:
    files = valid_files(2)
    files["pairs.jsonl"] = files["pairs.jsonl"] + b"{not json\n" + b"[" * 100_000 + b"\n"
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(2, None), (3, None)}
    assert all("not valid JSON" in p.reason for p in problems)


def test_csv_missing_column_is_reported(tmp_path: Path) -> None:
    files = {"pairs.csv": b"prompt,chosen\nx,a.png\n", "a.png": png()}
    problems = rejection(make_tar(tmp_path / "up.tgz", files), tmp_path / "ds")

    assert problems == [Problem(row=None, field="rejected", reason="missing column in pairs.csv")]


def test_parquet_missing_and_mistyped_columns_are_reported(tmp_path: Path) -> None:
    rows = [{"caption": "x", "jpg_0": png(), "label_0": "yes", "label_1": 0.0}]
    problems = rejection(make_parquet(tmp_path / "p.parquet", rows), tmp_path / "ds")

    assert where(problems) == {(None, "jpg_1"), (None, "label_0")}


def test_parquet_row_problems_name_row_and_column(tmp_path: Path) -> None:
    good = {"caption": "ok", "jpg_0": png(), "jpg_1": png(COOL), "label_0": 1.0, "label_1": 0.0}
    rows = [
        good,
        {**good, "caption": ""},
        {**good, "jpg_1": b"\x89PNG garbage"},
        {**good, "label_0": None},
    ]
    problems = rejection(make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA), tmp_path / "ds")

    assert where(problems) == {(1, "caption"), (2, "jpg_1"), (3, "label_0")}


def test_missing_manifest_is_reported(tmp_path: Path) -> None:
    problems = rejection(make_zip(tmp_path / "up.zip", {"images/a.png": png()}), tmp_path / "ds")
    assert len(problems) == 1 and "no pairs.jsonl or pairs.csv" in problems[0].reason


def test_unknown_file_type_is_rejected(tmp_path: Path) -> None:
    upload = tmp_path / "data.zip"
    upload.write_bytes(b"Rar!\x1a\x07\x00" + bytes(600))
    problems = rejection(upload, tmp_path / "ds")

    assert len(problems) == 1 and "not a zip, tar, tar.gz or parquet" in problems[0].reason


def test_truncated_zip_is_rejected(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "whole.zip", valid_files(3)).read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    problems = rejection(tmp_path / "cut.zip", tmp_path / "ds")

    assert any("not a readable zip" in p.reason for p in problems)


def test_too_many_pairs_stops_the_upload(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "up.zip", valid_files(5))
    problems = rejection(upload, tmp_path / "ds", IngestLimits(max_pairs=3))

    assert problems == [Problem(row=3, field=None, reason="more than 3 pairs; split the dataset")]


def test_problem_list_is_capped_with_a_count_of_the_rest(tmp_path: Path) -> None:
    files = valid_files(1)
    files["pairs.jsonl"] = jsonl([{"prompt": ""}] * 4)
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds", IngestLimits(max_problems=5))

    assert len(problems) == 6 and problems[-1].reason == "7 more problems"


def test_existing_dataset_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ingest(make_zip(tmp_path / "up.zip", valid_files()), tmp_path / "ds")
    assert (tmp_path / "ds" / "keep.txt").read_text() == "mine"


def test_rejection_removes_an_empty_dest_dir_and_writes_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    files = valid_files(2)
    files["images/1_c.png"] = b"junk"
    rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")
    assert not (tmp_path / "ds" / MANIFEST_FILE).exists()


# --- hostile archives ------------------------------------------------------------------------------------


def only_files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("evil", ["../evil.png", "images/../../evil.png", "..\\evil.png"])
def test_zip_slip_member_is_refused_and_nothing_lands_outside(tmp_path: Path, evil: str) -> None:
    files = valid_files()
    files[evil] = png()
    upload = make_zip(tmp_path / "up.zip", files)
    problems = rejection(upload, tmp_path / "work" / "ds")

    assert any("'..' path component" in p.reason and repr(evil) in p.reason for p in problems)
    assert only_files_under(tmp_path) == {"up.zip"}


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_absolute_member_path_is_refused(tmp_path: Path, maker: object) -> None:
    files = valid_files()
    files["/tmp/evil.png"] = png()
    upload = maker(tmp_path / "up.bin", files)  # type: ignore[operator]
    problems = rejection(upload, tmp_path / "ds")

    assert any("absolute path" in p.reason for p in problems)


def tar_link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device"),
        (tarfile.FIFOTYPE, "device"),
    ],
)
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes, reason: str) -> None:
    files = valid_files(1)
    files["pairs.jsonl"] = jsonl([{**pair_row(0), "chosen": "images/link.png"}])
    upload = make_tar(tmp_path / "up.tar.gz", files, extra=(tar_link("images/link.png", kind),))
    problems = rejection(upload, tmp_path / "ds")

    assert any(reason in p.reason and "images/link.png" in p.reason for p in problems)
    assert any((p.row, p.field) == (0, "chosen") and "refused" in p.reason for p in problems)


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "up.zip", valid_files())
    with zipfile.ZipFile(upload, "a") as archive:
        link = zipfile.ZipInfo("images/link.png")
        link.create_system = 3  # Unix, so the high bits of external_attr are st_mode
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    problems = rejection(upload, tmp_path / "ds")

    assert any("symbolic link" in p.reason for p in problems)


def test_zip_bomb_is_refused_by_compression_ratio(tmp_path: Path) -> None:
    files = valid_files()
    files["images/bomb.png"] = bytes(16 << 20)
    upload = make_zip(tmp_path / "up.zip", files)
    assert upload.stat().st_size < 100_000
    problems = rejection(upload, tmp_path / "ds")

    assert len(problems) == 1 and "expands" in problems[0].reason and "zip bomb" in problems[0].reason


def test_gzip_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    files = {"images/bomb.png": bytes(16 << 20), **valid_files()}
    problems = rejection(make_tar(tmp_path / "up.tar.gz", files), tmp_path / "ds")

    assert len(problems) == 1 and "gzip bomb" in problems[0].reason


# The bomb: 1,400 members of 4 MiB of zeros (none over the size where one member's ratio is judged).
BOMB_MEMBERS, BOMB_MEMBER_BYTES = 1400, 4 << 20


def test_a_zip_of_many_mid_size_members_is_refused_before_any_is_extracted(tmp_path: Path) -> None:
    upload = bomb_zip(
        tmp_path / "up.zip", members=BOMB_MEMBERS, member_bytes=BOMB_MEMBER_BYTES, files=valid_files()
    )
    assert upload.stat().st_size < 7_000_000
    before = written_bytes()
    problems = rejection(upload, tmp_path / "ds")
    scratch = written_bytes() - before

    assert len(problems) == 1 and "zip bomb" in problems[0].reason, problems
    assert scratch < 2 * upload.stat().st_size, f"wrote {scratch} bytes of scratch"


def test_a_tar_gz_of_many_mid_size_members_is_refused_before_the_disk_fills(tmp_path: Path) -> None:
    upload = bomb_tar_gz(
        tmp_path / "up.tar.gz", members=BOMB_MEMBERS, member_bytes=BOMB_MEMBER_BYTES, files=valid_files()
    )
    before = written_bytes()
    problems = rejection(upload, tmp_path / "ds")
    scratch = written_bytes() - before

    assert len(problems) == 1 and "gzip bomb" in problems[0].reason, problems
    assert scratch < 2 * upload.stat().st_size, f"wrote {scratch} bytes of scratch"


@pytest.mark.parametrize("name", ["up.zip", "up.tar", "up.tar.gz"])
def test_members_no_row_references_are_never_extracted(tmp_path: Path, name: str) -> None:
    noise = os.urandom(8 << 20)  # incompressible: no ratio limit objects to it
    files = {"extra/noise.bin": noise, **valid_files()}
    if name == "up.zip":
        upload = make_zip(tmp_path / name, files)
    else:
        upload = tmp_path / name
        with tarfile.open(upload, "w:gz" if name.endswith(".gz") else "w") as archive:
            for member, data in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    before = written_bytes()
    report = ingest(upload, tmp_path / "ds")
    scratch = written_bytes() - before

    assert report.num_pairs == 2
    assert scratch < len(noise), f"wrote {scratch} bytes: the unreferenced member was extracted"


def test_total_uncompressed_size_is_limited(tmp_path: Path) -> None:
    upload = make_zip(tmp_path / "up.zip", valid_files(4))
    problems = rejection(upload, tmp_path / "ds", IngestLimits(max_uncompressed_bytes=500))

    assert len(problems) == 1 and "over the limit of 500" in problems[0].reason


def test_tar_total_size_is_counted_while_streaming(tmp_path: Path) -> None:
    upload = make_tar(tmp_path / "up.tar.gz", valid_files(4))
    problems = rejection(upload, tmp_path / "ds", IngestLimits(max_uncompressed_bytes=2000))

    assert len(problems) == 1 and "more than 2000 bytes" in problems[0].reason


def test_image_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    upload = write_demo_upload(tmp_path / "demo.zip", kind="zip", num_pairs=2, resolution=64)
    problems = rejection(upload, tmp_path / "ds", IngestLimits(max_image_pixels=32 * 32))

    assert where(problems) == {(0, "chosen"), (0, "rejected"), (1, "chosen"), (1, "rejected")}
    assert all("4096 pixels, over the limit of 1024" in p.reason for p in problems)


def test_decompression_bomb_image_is_refused_from_its_header(tmp_path: Path) -> None:
    files = valid_files(1)
    files["images/0_w.png"] = png_claiming(100_000, 100_000)
    problems = rejection(make_zip(tmp_path / "up.zip", files), tmp_path / "ds")

    assert where(problems) == {(0, "chosen")}
    assert "pixels" in problems[0].reason


def test_image_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    rows = [{"caption": "x", "jpg_0": png(size=(64, 64)), "jpg_1": png(COOL), "label_0": 1.0, "label_1": 0.0}]
    upload = make_parquet(tmp_path / "p.parquet", rows, PICK_SCHEMA)
    problems = rejection(upload, tmp_path / "ds", IngestLimits(max_image_bytes=150))

    assert where(problems) == {(0, "jpg_0")}
    assert "over the limit of 150" in problems[0].reason
