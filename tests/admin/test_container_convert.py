"""Dockerfile -> Singularity definition conversion through spython."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_ft.containers.convert import convert_definition, convert_dockerfile
from hpc_ft.containers.recipes import lint_recipe, load_recipe
from hpc_ft.errors import UserError

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"


def test_dockerfile_hf_converts_to_a_def_equal_to_hf_def(tmp_path):
    out = tmp_path / "hf-converted.def"
    text = convert_dockerfile(CONTAINERS / "Dockerfile.hf", out)
    assert out.read_text() == text
    assert "Bootstrap: docker" in text and "Stage: spython-base" not in text
    converted = load_recipe(out)
    reference = load_recipe(CONTAINERS / "hf.def")
    assert converted.base == reference.base
    assert converted.labels == reference.labels  # KEY VALUE lines, not KEY="VALUE"
    assert converted.environment == reference.environment
    assert converted.files == reference.files
    # the converted file is a valid recipe apart from what Docker cannot express (%test, %help)
    assert {p.rule for p in lint_recipe(out)} == {"test", "help"}


def test_docker_labels_with_spaces_become_singularity_key_value_lines(tmp_path):
    df = tmp_path / "Dockerfile"
    df.write_text(
        'FROM docker.io/library/python:3.11.9-slim\n'
        'LABEL org.example.note="two words"\n'
        'ENV A=1\n'
        'RUN pip install --no-cache-dir "requests==2.32.3"\n'
    )
    text = convert_dockerfile(df)
    assert "org.example.note two words" in text
    assert 'org.example.note="two words"' not in text
    assert 'pip install --no-cache-dir "requests==2.32.3"' in text
    assert "export A=1" in text


def test_convert_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "x.def"
    out.write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        convert_dockerfile(CONTAINERS / "Dockerfile.hf", out)
    assert out.read_text() == "keep me"
    convert_dockerfile(CONTAINERS / "Dockerfile.hf", out, force=True)
    assert "Bootstrap: docker" in out.read_text()


def test_convert_missing_dockerfile_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        convert_dockerfile(tmp_path / "nope")


def test_hf_def_converts_back_to_a_dockerfile_equal_to_dockerfile_hf(tmp_path):
    out = tmp_path / "Dockerfile.from-def"
    text = convert_definition(CONTAINERS / "hf.def", out)
    assert "ENV PYTHONNOUSERSITE=1" in text.splitlines()  # spython alone drops ENV on names containing USER
    assert "%test" in text.splitlines()[1] and "/tests.sh" not in text
    converted = load_recipe(out)
    reference = load_recipe(CONTAINERS / "Dockerfile.hf")
    assert (converted.base, converted.labels, converted.environment, converted.files) == (
        reference.base, reference.labels, reference.environment, reference.files)
    with pytest.raises(UserError, match="already exists"):
        convert_definition(CONTAINERS / "hf.def", out)
