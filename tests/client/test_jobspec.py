from pathlib import Path

import pytest

from client.jobspec import JobSpecError, build_job_body, parse_value, read_spec_file


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("8", 8),
        ("true", True),
        ("no", "no"),
        ("[a fox, a cat]", ["a fox", "a cat"]),
        ("x y", "x y"),
    ],
)
def test_set_values_read_as_json_then_yaml_collections_else_text(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_training_fields_land_in_hyperparameters_and_sets_win_over_the_spec() -> None:
    spec = {"base_model": "tiny-sdxl", "max_train_steps": 10, "validation": {"prompts": ["a fox"]}}
    body = build_job_body(spec, ["max_train_steps=3", "validation.num_inference_steps=2", "seed=7"])
    assert body == {
        "base_model": "tiny-sdxl",
        "hyperparameters": {"max_train_steps": 3},
        "validation": {"prompts": ["a fox"], "num_inference_steps": 2},
        "seed": 7,
    }


def test_a_job_body_spec_keeps_its_hyperparameters(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("method: dpo\nhyperparameters:\n  learning_rate: 0.001\n", encoding="utf-8")
    assert build_job_body(read_spec_file(path), []) == {
        "method": "dpo",
        "hyperparameters": {"learning_rate": 0.001},
    }


def test_unreadable_input_names_itself(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="key=value"):
        build_job_body(None, ["steps"])
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(JobSpecError, match="mapping"):
        read_spec_file(tmp_path / "list.yaml")
