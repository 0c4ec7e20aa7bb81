"""Container recipes in containers/: spython parses and round-trips them, tags are pinned, labels and %test present."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hpc_ft
from hpc_ft.containers.lock import load_lock
from hpc_ft.containers.recipes import (
    REQUIRED_LABELS,
    find_recipe,
    lint_recipe,
    list_recipes,
    load_recipe,
    parse_image_ref,
    recipes_dir,
)
from hpc_ft.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
RECIPES = list_recipes(CONTAINERS)


def test_recipe_dir_is_the_checkout_folder():
    assert recipes_dir().resolve() == CONTAINERS.resolve()


def test_expected_recipes_are_present():
    names = {p.name for p in RECIPES}
    assert {"nemo-24.03.def", "hf.def", "Dockerfile.hf"} <= names
    newest = [n for n in names if re.fullmatch(r"nemo-\d\d\.\d\d\.def", n) and n != "nemo-24.03.def"]
    assert newest == ["nemo-25.09.def"], "the newest NeMo image that still runs on V100 is 25.09 (CUDA 12.9)"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_lints_clean(path):
    assert lint_recipe(path) == []


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_targets_v100(path):
    recipe = load_recipe(path)
    labels = recipe.labels
    assert set(REQUIRED_LABELS) <= set(labels)
    assert labels["org.hpc-ft.min-compute-capability"] == "7.0"
    assert labels["org.hpc-ft.cuda-version"].startswith("12."), "CUDA 13 images drop sm70"
    assert labels["org.hpc-ft.version"] == hpc_ft.__version__
    assert parse_image_ref(recipe.base).pinned


def test_nemo_recipes_match_the_reference_site_and_switch_off_te_fused_attention():
    r = load_recipe(CONTAINERS / "nemo-24.03.def")
    assert r.base == "nvcr.io/nvidia/nemo:24.03"
    for name in ("nemo-24.03.def", "nemo-25.09.def"):
        env = load_recipe(CONTAINERS / name).environment
        assert env["NVTE_FLASH_ATTN"] == "0" and env["NVTE_FUSED_ATTN"] == "0"
        assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
        text = (CONTAINERS / name).read_text()
        assert "sm_70" in text and "/opt/NeMo" in text and "%test" in text


def test_hf_def_and_dockerfile_describe_the_same_image():
    d = load_recipe(CONTAINERS / "hf.def")
    k = load_recipe(CONTAINERS / "Dockerfile.hf")
    assert d.base == k.base
    assert d.labels == k.labels
    assert d.environment == k.environment
    assert d.files == k.files

    def pins(recipe):
        return sorted(set(re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*==[0-9][0-9A-Za-z.+-]*)", " ".join(recipe.post))))

    assert pins(d) and pins(d) == pins(k)
    assert "torch==2.7.1" in pins(d)


def test_hf_recipes_install_the_wheel_of_this_checkout():
    for name in ("hf.def", "Dockerfile.hf"):
        wheels = [src for src, _ in load_recipe(CONTAINERS / name).files if src.endswith(".whl")]
        assert wheels == [f"dist/hpc_ft-{hpc_ft.__version__}-py3-none-any.whl"]


def test_find_recipe_by_name_and_suggestion():
    assert find_recipe("nemo-24.03", CONTAINERS).name == "nemo-24.03.def"
    with pytest.raises(UserError, match="Did you mean 'nemo-24.03'"):
        find_recipe("nemo-24.3", CONTAINERS)


def test_lock_has_an_entry_for_every_def_and_sources_match():
    lock = load_lock(CONTAINERS / "images.lock")
    defs = {p.name for p in RECIPES if p.suffix == ".def"}
    assert {e.recipe for e in lock.images.values()} == defs
    for entry in lock.images.values():
        recipe = load_recipe(lock.recipe_path(entry))
        assert entry.source == "docker://" + recipe.base
    # nobody built these images here: the digests must be honestly unset, not invented
    assert all(e.sha256 is None and e.size_bytes is None for e in lock.images.values())


# ------------------------------------------------------------------ lint catches broken recipes

GOOD = """\
Bootstrap: docker
From: {base}

%labels
{labels}

%environment
    export HF_HUB_OFFLINE=1

%post
{post}

{test}

%help
    help text
"""

LABELS = "\n".join(
    f"    {k} {v}"
    for k, v in {
        "org.hpc-ft.version": "0.1.0",
        "org.hpc-ft.base-image": "docker.io/library/ubuntu",
        "org.hpc-ft.base-tag": "22.04",
        "org.hpc-ft.nemo-version": "none",
        "org.hpc-ft.cuda-version": "12.6",
        "org.hpc-ft.min-compute-capability": "7.0",
    }.items()
)


def _write(tmp_path, base="docker.io/library/ubuntu:22.04", labels=LABELS, post="    echo hi", test="%test\n    true"):
    p = tmp_path / "x.def"
    p.write_text(GOOD.format(base=base, labels=labels, post=post, test=test))
    return p


def _rules(problems):
    return sorted({p.rule for p in problems})


def test_lint_accepts_the_minimal_good_recipe(tmp_path):
    assert lint_recipe(_write(tmp_path)) == []


@pytest.mark.parametrize("base", ["docker.io/library/ubuntu:latest", "docker.io/library/ubuntu"])
def test_lint_rejects_unpinned_base(tmp_path, base):
    assert "pinned-tag" in _rules(lint_recipe(_write(tmp_path, base=base)))


def test_lint_accepts_a_digest_pin(tmp_path):
    base = "docker.io/library/ubuntu@sha256:" + "a" * 64
    labels = LABELS.replace("22.04", "sha256:" + "a" * 64)
    assert lint_recipe(_write(tmp_path, base=base, labels=labels)) == []


def test_lint_reports_missing_labels(tmp_path):
    labels = "\n".join(ln for ln in LABELS.splitlines() if "cuda-version" not in ln)
    problems = lint_recipe(_write(tmp_path, labels=labels))
    assert _rules(problems) == ["labels"]
    assert "org.hpc-ft.cuda-version" in problems[0].message


def test_lint_reports_label_base_disagreeing_with_from(tmp_path):
    labels = LABELS.replace("base-tag 22.04", "base-tag 24.04")
    assert _rules(lint_recipe(_write(tmp_path, labels=labels))) == ["label-base"]


def test_lint_reports_missing_test_section(tmp_path):
    assert _rules(lint_recipe(_write(tmp_path, test=""))) == ["test"]


def test_lint_reports_a_post_line_spython_cannot_round_trip(tmp_path):
    # spython's SingularityWriter rewrites lines starting with USER into `su - ...`
    problems = lint_recipe(_write(tmp_path, post="    USER_HOME=/opt/x mkdir -p /opt/x"))
    assert _rules(problems) == ["round-trip"]
    assert "post" in problems[0].message


def test_lint_rejects_non_docker_bootstrap(tmp_path):
    p = tmp_path / "y.def"
    p.write_text("Bootstrap: library\nFrom: ubuntu:22.04\n%test\n    true\n")
    assert _rules(lint_recipe(p)) == ["bootstrap"]
