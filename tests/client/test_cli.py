"""`python -m client …` as a user runs it: against its own data dir, and against a real API process."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from PIL import Image

from core.db import Database
from core.settings import Settings
from tests.support.archives import jsonl, make_zip, pair_row, valid_files
from tests.support.commands import REPO_ROOT, mapo, service_env
from tests.support.processes import ApiServer
from tests.support.recording import JobWriter


def test_api_commands_without_a_key_say_how_to_get_one(tmp_path: Path) -> None:
    result = mapo("jobs", "list", env=service_env(tmp_path))
    assert result.returncode == 2
    assert "mapo keys create" in result.stderr


def test_upload_create_list_cancel_and_watch_a_job(api_server: ApiServer, tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    assert (
        mapo("demo-data", str(demo), "--pairs", "4", "--resolution", "32", env=api_server.env).returncode == 0
    )
    upload = mapo("datasets", "upload", str(demo), "--name", "warm", env=api_server.env)
    assert upload.returncode == 0, upload.stderr
    dataset_id = upload.stdout.split()[0]
    assert dataset_id in mapo("datasets", "list", env=api_server.env).stdout

    created = mapo(
        *("jobs", "create", "--dataset", dataset_id, "--base-model", "tiny-sd", "--steps", "3"),
        *("--set", "mixed_precision=no", "--set", "validation.prompts=[a fox]"),
        env=api_server.env,
    )
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.split()[0]
    listed = mapo("jobs", "list", env=api_server.env).stdout
    assert job_id in listed and "queued" in listed and "0/3" in listed
    job = json.loads(mapo("jobs", "get", job_id, env=api_server.env).stdout)
    assert (job["hyperparameters"]["max_train_steps"], job["hyperparameters"]["mixed_precision"]) == (3, "no")
    assert job["validation"]["prompts"] == ["a fox"]

    assert mapo("jobs", "cancel", job_id, env=api_server.env).stdout.split() == [job_id, "cancelled"]
    watched = mapo("jobs", "watch", job_id, env=api_server.env)
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert "cancel_requested" in watched.stdout


def test_api_errors_print_code_and_param(api_server: ApiServer) -> None:
    result = mapo("jobs", "create", "--dataset", "ds_missing", "--base-model", "sd-9000", env=api_server.env)
    assert result.returncode == 1
    assert "unknown_base_model" in result.stderr and "param: base_model" in result.stderr
    missing = mapo("adapter", "job_missing", env=api_server.env)
    assert (missing.returncode, "404 not_found" in missing.stderr) == (1, True)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LiveOutput:
    """The stdout of a running `mapo` process, read as it comes (ANSI escapes removed)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process, self.text, self._lock = process, "", threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with contextlib.suppress(ValueError):  # the pipe was closed under us: the test is over
            while chunk := self.process.stdout.read(1):
                with self._lock:
                    self.text += chunk

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The first match of `pattern`; fails with what was printed if it does not show up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = re.search(pattern, ANSI.sub("", self.text))
            if found:
                return found.group(0)
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never printed; output so far:\n{ANSI.sub('', self.text)}")


def test_watch_shows_a_live_bar_of_step_loss_and_eta_until_the_job_ends(api_server: ApiServer) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=4)
    writer.steps(1)
    # An interactive terminal, as a user has: the bar is redrawn as steps arrive.
    env = {**api_server.env, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    command = [sys.executable, "-m", "client", "jobs", "watch", writer.job_id]
    watch = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        output = LiveOutput(watch)
        output.wait_for(r"1/4 loss 1\.0000")
        writer.steps(1)
        output.wait_for(r"2/4 loss 0\.5000 (-:--:--|\d+:\d\d:\d\d)")
        writer.steps(2)
        output.wait_for(r"4/4 loss 0\.2500")
        writer.finish()
        assert watch.wait(timeout=60) == 0
        output.wait_for(rf"{writer.job_id} succeeded")
    finally:
        watch.kill()
        watch.wait()
        writer.close()


def test_jobs_list_is_a_table_with_progress_and_eta_of_running_jobs(api_server: ApiServer) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=10)
    writer.steps(3, eta_seconds=75)
    listed = mapo("jobs", "list", "--status", "running", env=api_server.env)
    assert listed.returncode == 0, listed.stderr
    header, row = (
        listed.stdout.splitlines()[1],
        next(r for r in listed.stdout.splitlines() if writer.job_id in r),
    )
    assert header.split() == ["┃", "id", "┃", "status", "┃", "progress", "┃", "eta", "┃", "created", "┃"]
    assert row.split()[1:8:2] == [writer.job_id, "running", "3/10", "1m15s"]
    writer.close()


def test_samples_saves_every_validation_image_named_by_step_prompt_and_model(
    api_server: ApiServer, tmp_path: Path
) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant)
    colors = {(0, False): (10, 10, 10), (2, True): (200, 0, 0), (2, False): (0, 0, 200)}
    for (step, with_lora), color in colors.items():
        writer.sample(step=step, index=0, prompt="a fox", with_lora=with_lora, png=png(color))
    out = tmp_path / "samples"
    saved = mapo("samples", writer.job_id, "-o", str(out), env=api_server.env)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.splitlines() == [f"3 images in {out}", f"before/after sheet: {out / 'sheet.png'}"]
    names = {
        "step-000000_p0_base.png": (10, 10, 10),
        "step-000002_p0_lora.png": (200, 0, 0),
        "step-000002_p0_base.png": (0, 0, 200),
    }
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "sheet.png"])
    for name, color in names.items():
        assert Image.open(out / name).getpixel((0, 0)) == color
    # The sheet: step 2's base image (blue) above its LoRA image (red), as client/sheet.py lays it out.
    sheet = Image.open(out / "sheet.png")
    assert sheet.getpixel((sheet.width - 1, sheet.height - 1)) == (200, 0, 0)
    assert sheet.getpixel((sheet.width - 1, sheet.height // 2)) == (0, 0, 200)
    writer.close()


def test_demo_data_writes_the_prefer_red_preset_by_default_and_warm_cool_on_request(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    for preset, prompts_end in (("prefer-red", " background"), ("warm-cool", ", flat illustration")):
        out = tmp_path / f"{preset}.zip"
        extra = () if preset == "prefer-red" else ("--preset", preset)
        made = mapo("demo-data", str(out), "--pairs", "2", "--resolution", "16", *extra, env=env)
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip() == f"{out}: 2 {preset} demo pairs at 16px"
        with zipfile.ZipFile(out) as archive:
            prompts = [json.loads(line)["prompt"] for line in archive.read("pairs.jsonl").splitlines()]
        assert len(prompts) == 2 and all(prompt.endswith(prompts_end) for prompt in prompts)


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


def test_workers_is_a_table_of_queues_and_gpus(api_server: ApiServer) -> None:
    from core.repositories import workers as worker_repo
    from tests.support.factories import advertisement

    database = Database(Settings(data_dir=api_server.data_dir))
    with database.session_scope() as session:
        worker_repo.register_worker(session, advertisement("h100-a@h1"))
    database.dispose()
    listed = mapo("workers", env=api_server.env)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in listed.stdout.splitlines() if "h100-a@h1" in r)
    assert "online" in row and "mapo.gpu.h100" in row and "8x NVIDIA H100 80GB HBM3 (81559 MiB)" in row
    assert "h100-a@h1" not in mapo("workers", "--status", "offline", env=api_server.env).stdout


def test_a_missing_file_is_one_line_naming_it_and_exit_2(api_server: ApiServer, tmp_path: Path) -> None:
    for args in (
        ("datasets", "upload", str(tmp_path / "nope.zip")),
        ("jobs", "create", "--spec", str(tmp_path / "nope.yaml")),
    ):
        result = mapo(*args, env=api_server.env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"mapo: {args[-1]}: no such file"]


def test_datasets_get_shows_one_and_delete_removes_it(api_server: ApiServer, tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    mapo("demo-data", str(demo), "--pairs", "2", "--resolution", "16", env=api_server.env)
    dataset_id = mapo("datasets", "upload", str(demo), env=api_server.env).stdout.split()[0]

    shown = mapo("datasets", "get", dataset_id, env=api_server.env)
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["id"], json.loads(shown.stdout)["num_pairs"]) == (dataset_id, 2)
    deleted = mapo("datasets", "delete", dataset_id, env=api_server.env)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, f"{dataset_id} deleted")
    gone = mapo("datasets", "get", dataset_id, env=api_server.env)
    assert gone.returncode == 1 and "404 not_found" in gone.stderr


def test_jobs_delete_removes_a_finished_job_and_refuses_a_running_one(api_server: ApiServer) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=4)
    writer.steps(1)
    running = mapo("jobs", "delete", writer.job_id, env=api_server.env)
    assert running.returncode == 1 and "409 job_not_finished" in running.stderr
    writer.finish()
    deleted = mapo("jobs", "delete", writer.job_id, env=api_server.env)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, f"{writer.job_id} deleted")
    assert "404 not_found" in mapo("jobs", "get", writer.job_id, env=api_server.env).stderr
    writer.close()


def test_jobs_create_takes_the_method_as_an_option(api_server: ApiServer, tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    mapo("demo-data", str(demo), "--pairs", "2", "--resolution", "16", env=api_server.env)
    dataset_id = mapo("datasets", "upload", str(demo), env=api_server.env).stdout.split()[0]
    created = mapo(
        *("jobs", "create", "--dataset", dataset_id, "--base-model", "tiny-sd", "--method", "dpo"),
        env=api_server.env,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.split()[1:4] == ["queued:", "dpo", "on"]
    mapo("jobs", "cancel", created.stdout.split()[0], env=api_server.env)


def test_help_documents_every_demo_data_option_and_marks_the_required_ones(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    demo = " ".join(mapo("demo-data", "--help", env=env).stdout.split())
    for option in ("--pairs", "--resolution", "--seed"):
        assert re.search(rf"{option} [A-Z]+ [a-z]", demo), f"{option} has no help in: {demo}"
    create = " ".join(mapo("jobs", "create", "--help", env=env).stdout.split())
    assert "--dataset DATASET dataset id (required unless the --spec file has dataset_id)" in create
    assert "required unless the --spec file has base_model" in create
    keys = " ".join(mapo("keys", "create", "--help", env=env).stdout.split())
    assert "(required)" in keys


def test_lists_show_every_id_whole_on_an_80_column_terminal(api_server: ApiServer, tmp_path: Path) -> None:
    demo = tmp_path / "demo.zip"
    mapo("demo-data", str(demo), "--pairs", "2", "--resolution", "16", env=api_server.env)
    long_name = "a dataset whose name is long enough to crowd the table on a narrow terminal"
    upload = mapo("datasets", "upload", str(demo), "--name", long_name, env=api_server.env)
    dataset_id = upload.stdout.split()[0]
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=2000)
    writer.steps(1, eta_seconds=3600)
    narrow = {**api_server.env, "COLUMNS": "80"}

    for command, wanted in ((("datasets", "list"), dataset_id), (("jobs", "list"), writer.job_id)):
        listed = mapo(*command, env=narrow)
        assert listed.returncode == 0, listed.stderr
        assert max(len(line) for line in listed.stdout.splitlines()) <= 80
        assert any(wanted in line for line in listed.stdout.splitlines()), listed.stdout
        assert "…" not in listed.stdout, listed.stdout
    writer.close()


def test_jobs_create_shows_every_invalid_field_once(api_server: ApiServer) -> None:
    created = mapo(
        *("jobs", "create", "--dataset", "ds_any", "--base-model", "tiny-sd", "--steps", "0"),
        *("--set", "learning_rate=2", "--set", "train_batch_size=0"),
        env=api_server.env,
    )
    assert created.returncode == 1
    lines = created.stderr.splitlines()
    assert lines[0] == "mapo: 422 invalid_request: 3 invalid fields:", created.stderr
    named = sorted(line.split()[1].rstrip(":") for line in lines[1:])
    assert named == [
        "hyperparameters.learning_rate",
        "hyperparameters.max_train_steps",
        "hyperparameters.train_batch_size",
    ], created.stderr


def test_a_refused_upload_prints_each_problem_once_in_words(api_server: ApiServer, tmp_path: Path) -> None:
    files = valid_files(1)
    files["pairs.jsonl"] = jsonl(
        [
            pair_row(0),
            {"prompt": "missing file", "chosen": "images/nope.png", "rejected": "images/0_c.png"},
            {"prompt": "   ", "chosen": "images/0_w.png", "rejected": "images/0_c.png"},
        ]
    )
    refused = mapo("datasets", "upload", str(make_zip(tmp_path / "broken.zip", files)), env=api_server.env)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.startswith("mapo:")]
    assert lines[0] == "mapo: 422 dataset_rejected: 2 problem(s); fix them and upload again:", refused.stderr
    assert lines[1].startswith("mapo:   row 1, field chosen: "), refused.stderr
    assert lines[2] == "mapo:   row 2, field prompt: prompt is empty", refused.stderr
    assert len(lines) == 3 and "{'" not in refused.stderr, refused.stderr


def test_samples_of_a_job_without_validation_prompts_says_why_it_has_none(
    api_server: ApiServer, tmp_path: Path
) -> None:
    writer = JobWriter(api_server.data_dir, api_server.tenant, total_steps=2)
    writer.steps(2)
    writer.finish()
    out = tmp_path / "samples"
    saved = mapo("samples", writer.job_id, "-o", str(out), env=api_server.env)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.splitlines() == [
        f"0 images in {out}: the job has no validation prompts, so it renders no images (create a job with "
        "validation.prompts, e.g. --set 'validation.prompts=[a red circle]', to get before/after images)"
    ]
    writer.close()
