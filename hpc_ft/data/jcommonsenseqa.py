"""JCommonsenseQA -> instruction jsonl {input, output}, exactly as the reference tutorial converts it; plus a learnable synthetic set in the same format."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from hpc_ft.errors import UserError

TRAIN_SOURCE = "train-v1.1.json"
VALID_SOURCE = "valid-v1.1.json"
TRAIN_FILE = "train-v1.1.jsonl"
VALID_FILE = "valid-v1.1.jsonl"
TEST_FILE = "test-v1.1.jsonl"
JGLUE_SUBDIR = Path("datasets") / "jcommonsenseqa-v1.1"
N_CHOICES = 5
REQUIRED_FIELDS = ("question",) + tuple(f"choice{i}" for i in range(N_CHOICES)) + ("label",)


@dataclass(frozen=True)
class PreparedData:
    """The three converted splits, their row counts and sha256 checksums (hex), keyed train/valid/test."""

    train: Path
    valid: Path
    test: Path
    rows: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    def paths(self) -> dict[str, Path]:
        return {"train": self.train, "valid": self.valid, "test": self.test}


def format_prompt(row: dict) -> str:
    """The reference prompt: instruction, the five choices as a list, the question, then '### 応答:'."""
    return (
        "### 指示:\n"
        " 与えられた選択肢の中から、最適な答えを選んでください。"
        " 出力は以下から選択してください：\n"
        f"- {row['choice0']}\n"
        f"- {row['choice1']}\n"
        f"- {row['choice2']}\n"
        f"- {row['choice3']}\n"
        f"- {row['choice4']}\n"
        "### 入力:\n"
        f"{row['question']}\n"
        "### 応答:"
    )


def to_instruction(row: dict) -> dict:
    """One JGLUE row -> {input: prompt, output: the text of the labelled choice}."""
    answer = row[f"choice{row['label']}"]
    return {"input": format_prompt(row), "output": f"{answer}"}


def find_source_dir(source_dir: str | Path) -> Path:
    """Accept the folder holding the two JGLUE files or the JGLUE repository root."""
    root = Path(source_dir).expanduser()
    for candidate in (root, root / JGLUE_SUBDIR):
        if (candidate / TRAIN_SOURCE).is_file() and (candidate / VALID_SOURCE).is_file():
            return candidate
    raise UserError(
        f"data source '{root}': neither it nor {root / JGLUE_SUBDIR} holds {TRAIN_SOURCE} and {VALID_SOURCE}; "
        "point it at a JGLUE clone (git clone https://github.com/yahoojapan/JGLUE) or at its "
        "datasets/jcommonsenseqa-v1.1 folder."
    )


def read_jglue_rows(path: Path) -> list[dict]:
    """Read JGLUE JSON lines, checking every row; a bad row raises UserError naming file, line and field."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object; fix or remove that line."
                ) from None
            _check_row(row, path, line_no)
            rows.append(row)
    return rows


def _check_row(row: object, path: Path, line_no: int) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}; fix that line.")
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise UserError(
            f"{path}:{line_no}: row lacks field '{missing[0]}' (needs {', '.join(REQUIRED_FIELDS)}); "
            "add it or remove that line."
        )
    label = row["label"]
    if isinstance(label, bool) or str(label) not in {str(i) for i in range(N_CHOICES)}:
        raise UserError(
            f"{path}:{line_no}: field 'label' is {label!r}; it must be 0-{N_CHOICES - 1} "
            "(the index of the right choice); fix that line."
        )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_jglue(source_dir: str | Path, out_dir: str | Path, seed: int = 42, n_valid: int = 1000) -> PreparedData:
    """The reference conversion: shuffle JGLUE train (seed), last n_valid -> valid, rest -> train; JGLUE valid -> test."""
    source = find_source_dir(source_dir)
    train_rows = [to_instruction(row) for row in read_jglue_rows(source / TRAIN_SOURCE)]
    test_rows = [to_instruction(row) for row in read_jglue_rows(source / VALID_SOURCE)]
    if not 0 < n_valid < len(train_rows):
        raise UserError(
            f"n_valid={n_valid}: must be between 1 and {len(train_rows) - 1}, since {source / TRAIN_SOURCE} "
            f"has {len(train_rows)} rows; choose a smaller validation split."
        )
    random.Random(seed).shuffle(train_rows)  # same permutation as the reference's random.seed(42); random.shuffle
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": (out / TRAIN_FILE, train_rows[:-n_valid]),
        "valid": (out / VALID_FILE, train_rows[-n_valid:]),
        "test": (out / TEST_FILE, test_rows),
    }
    for path, rows in splits.values():
        write_jsonl(path, rows)
    return PreparedData(
        train=splits["train"][0].resolve(),
        valid=splits["valid"][0].resolve(),
        test=splits["test"][0].resolve(),
        rows={name: len(rows) for name, (_, rows) in splits.items()},
        sha256={name: sha256_of(path) for name, (path, _) in splits.items()},
    )


# A synthetic task a tiny model can learn: each question describes one concept, and the right
# choice is always that concept's answer word (a fixed mapping); the four distractors are other
# concepts' answers, and the position of the right one is random.
SYNTHETIC_CONCEPTS = (
    ("空を飛ぶ乗り物", "飛行機"),
    ("線路の上を走る乗り物", "電車"),
    ("海に浮かぶ乗り物", "船"),
    ("字を書く道具", "鉛筆"),
    ("紙を切る道具", "はさみ"),
    ("時間を知る道具", "時計"),
    ("雨の日に差すもの", "傘"),
    ("水の中を泳ぐ生き物", "魚"),
    ("ワンと鳴く動物", "犬"),
    ("ニャーと鳴く動物", "猫"),
    ("赤くて丸い果物", "りんご"),
    ("黄色くて細長い果物", "バナナ"),
    ("本を借りる場所", "図書館"),
    ("病気を治してもらう場所", "病院"),
    ("子供が勉強する場所", "学校"),
    ("夜空に光るもの", "星"),
    ("冬に降る白いもの", "雪"),
    ("朝に東から昇るもの", "太陽"),
    ("料理を作る部屋", "台所"),
    ("手紙を出す場所", "郵便局"),
)
# The concept comes first and punctuation parts it from the template, so a tokenizer keeps it whole.
SYNTHETIC_TEMPLATES = (
    "{concept}。これを何という？",
    "{concept}、それは何でしょう？",
    "{concept}。次のうちどれ？",
    "{concept}、といえば何？",
)


def synthetic_rows(n_rows: int, rng: random.Random, id_offset: int = 0) -> list[dict]:
    """JGLUE-format rows of the synthetic task (fields q_id, question, choice0..choice4, label)."""
    answers = [answer for _, answer in SYNTHETIC_CONCEPTS]
    rows = []
    for index in range(n_rows):
        concept, answer = rng.choice(SYNTHETIC_CONCEPTS)
        distractors = rng.sample([a for a in answers if a != answer], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        choices = distractors[:label] + [answer] + distractors[label:]
        row = {"q_id": id_offset + index, "question": rng.choice(SYNTHETIC_TEMPLATES).format(concept=concept)}
        row.update({f"choice{i}": choice for i, choice in enumerate(choices)})
        row["label"] = label
        rows.append(row)
    return rows


def make_synthetic(out_dir: str | Path, n_train: int, n_valid: int, n_test: int, seed: int) -> PreparedData:
    """Write raw JGLUE-style files under out_dir/raw/ and convert them with convert_jglue (same code path)."""
    for name, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if value < 1:
            raise UserError(f"{name}={value}: a synthetic split needs at least one row; pass a positive count.")
    out = Path(out_dir).expanduser()
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    write_jsonl(raw / TRAIN_SOURCE, synthetic_rows(n_train + n_valid, rng))
    write_jsonl(raw / VALID_SOURCE, synthetic_rows(n_test, rng, id_offset=n_train + n_valid))
    return convert_jglue(raw, out, seed=seed, n_valid=n_valid)
