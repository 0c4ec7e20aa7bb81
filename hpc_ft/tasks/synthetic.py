"""Synthetic data sets for the classification, NER and preference tasks, in the formats users bring, with labels a tiny model can learn.

Each set is Japanese-like text built from small word lists with a seeded RNG; the rule that decides
the label is stated on each generator, so a run's gain over the untuned baseline is a real learning
signal (never a copy of the answer into the input).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Dict, List

from hpc_ft.tasks.rows import write_jsonl

SUBJECTS = ["この店", "新しい電話", "昨日の映画", "駅前のカフェ", "あのホテル", "今年の祭り", "先生の授業", "近所の公園",
            "このアプリ", "週末の旅行", "隣の食堂", "図書館"]
FILLERS = ["今日は", "正直に言うと", "友達と行ったが", "値段を考えると", "全体として", "一言で言えば", "思ったより", ""]
SENTIMENT = {
    "positive": ["とても良かった", "最高だった", "気に入った", "また行きたい", "素晴らしい", "楽しかった"],
    "negative": ["ひどかった", "最悪だった", "がっかりした", "二度と行かない", "つまらない", "高すぎる"],
    "neutral": ["普通だった", "特に何もない", "まあまあだった", "いつも通りだった", "可もなく不可もない"],
}

PERSONS = [["田中"], ["山田", "太郎"], ["佐藤"], ["鈴木", "花子"], ["高橋"], ["伊藤", "健"], ["中村"], ["小林", "愛"]]
PLACES = [["東京"], ["大阪"], ["京都"], ["北海道"], ["名古屋"], ["福岡"], ["沖縄"], ["横浜"]]
ORGS = [["トヨタ"], ["国立", "遺伝学", "研究所"], ["京都", "大学"], ["日本", "銀行"], ["ソニー"], ["東北", "電力"]]
NER_TEMPLATES = [
    ["{PER}", "さん", "は", "{LOC}", "に", "住んで", "いる", "。"],
    ["{PER}", "は", "{ORG}", "で", "働いて", "いる", "。"],
    ["{ORG}", "は", "{LOC}", "に", "本社", "が", "ある", "。"],
    ["昨日", "{PER}", "さん", "と", "{LOC}", "へ", "行った", "。"],
    ["{LOC}", "の", "天気", "は", "晴れ", "だった", "。"],
    ["{PER}", "が", "{ORG}", "の", "会議", "に", "出た", "。"],
    ["今日", "は", "雨", "が", "降って", "いる", "。"],
]

TOPICS = ["料理", "天気", "旅行", "音楽", "数学", "歴史", "健康", "仕事"]
GOOD = ["について詳しく説明します。要点は三つあります。", "の基本を順に紹介します。まず大切なのは準備です。",
        "について例を挙げて丁寧に答えます。", "の良い方法を具体的にまとめました。"]
BAD = ["わかりません。", "知りません。", "答えられません。", "別の話をしましょう。"]


def classification_rows(n: int, rng: random.Random) -> List[dict]:
    """{text, label}: the label is the sentiment phrase's class (positive, negative, neutral)."""
    rows = []
    labels = sorted(SENTIMENT)
    for _ in range(n):
        label = rng.choice(labels)
        text = f"{rng.choice(FILLERS)}{rng.choice(SUBJECTS)}は{rng.choice(SENTIMENT[label])}。"
        rows.append({"text": text, "label": label})
    return rows


def ner_rows(n: int, rng: random.Random) -> List[dict]:
    """{tokens, tags} in IOB2: names from the person, place and organisation lists, in template sentences."""
    names = {"{PER}": ("PER", PERSONS), "{LOC}": ("LOC", PLACES), "{ORG}": ("ORG", ORGS)}
    rows = []
    for _ in range(n):
        tokens: List[str] = []
        tags: List[str] = []
        for word in rng.choice(NER_TEMPLATES):
            if word in names:
                kind, choices = names[word]
                name = rng.choice(choices)
                tokens += name
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            else:
                tokens.append(word)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def preference_rows(n: int, rng: random.Random) -> List[dict]:
    """{prompt, response_a, response_b, label}: a helpful answer beats a refusal; two of a kind tie."""
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        good_a, good_b = rng.random() < 0.5, rng.random() < 0.5
        answer = lambda good: topic + rng.choice(GOOD) if good else rng.choice(BAD)  # noqa: E731
        label = "tie" if good_a == good_b else ("a" if good_a else "b")
        rows.append({"prompt": f"{topic}について教えてください。", "response_a": answer(good_a),
                     "response_b": answer(good_b), "label": label})
    return rows


GENERATORS: Dict[str, Callable[[int, random.Random], List[dict]]] = {
    "classification": classification_rows,
    "token_classification": ner_rows,
    "preference": preference_rows,
}


def make_synthetic(task: str, train: Path, validation: Path | None, test: Path | None,
                   n_train: int, n_valid: int, n_test: int, seed: int) -> None:
    """Write the task's synthetic splits (jsonl) where the data keys point."""
    rng = random.Random(seed)
    generate = GENERATORS[task]
    write_jsonl(train, generate(n_train, rng))
    if validation is not None:
        write_jsonl(validation, generate(n_valid, rng))
    if test is not None:
        write_jsonl(test, generate(n_test, rng))
