"""Submit-time data checks: every split's files read, recognised and rendered before anything is queued, the per-split summary, and the nemo backend's converted files.

`check_job_data(spec, dry_run)` refuses bad data (UserError: file:line or the key, and a fix) and returns
a DataReport whose `summary_lines()` the CLI shows on stderr; `backend_data_files(spec, report, run_dir)`
points the nemo backend's file_names at NeMo jsonl in the run folder and returns a BackendData whose
`.write()` writes them (once the run folder exists) and returns run.json's data record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from hpc_ft.data.dataset import LoadedFile, load_file, uses_chat_template
from hpc_ft.data.files import file_checksum
from hpc_ft.data.formats import FORMAT_NAMES
from hpc_ft.data.lengths import LengthSummary, summarize, token_counter
from hpc_ft.data.spec import DataOptions, SplitFiles, options_from_spec, splits_from_spec
from hpc_ft.data.templates import LOSS_CLOSE, LOSS_OPEN, ChatTemplate, FieldTemplate
from hpc_ft.errors import UserError, did_you_mean

NEMO_CONVERTED_TEMPLATE = "{input}{output}"   # converted rows hold the rendered prompt in input, the answer in output
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class SplitReport:
    split: SplitFiles
    files: List[LoadedFile] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)      # dry run only: files not there yet
    lengths: Optional[LengthSummary] = None

    def lines(self) -> List[str]:
        name = self.split.name
        if not self.files:
            return [f"data {name}: not checked ({', '.join(self.missing)} not there yet)"]
        rows = sum(f.rows for f in self.files)
        kept = sum(len(f.labels) for f in self.files)
        formats = ", ".join(sorted({f.format.name for f in self.files}))
        head = f"data {name}: {rows} rows in {len(self.files)} file(s) ({formats})"
        if kept != rows:
            head += f", {rows - kept} skipped (empty answer)"
        out = [head]
        first = self.files[0]
        if first.template is None:
            out.append("  first example: rendered in the job (the tokenizer's chat template comes with the model)")
        else:
            out.append(f"  first example, the loss part between {LOSS_OPEN} and {LOSS_CLOSE}:")
            out += [f"  | {line}" for line in first.example(0).marked().split("\n")]
        if self.lengths is not None:
            s = self.lengths
            if s.sample:
                cut = (f"~{s.over} row(s) would be cut (estimated from the sample)" if s.over_estimated else
                       f"{s.over} row(s) would be cut (every row that could be over it counted)")
                out.append(f"  length: p50 ~{s.p50}, p95 ~{s.p95}, max ~{s.max} {s.unit} (a sample of {s.sample:,} "
                           f"of {s.rows:,} rows); max_seq_length {s.limit}: {cut}")
            else:
                out.append(f"  length: p50 {s.p50}, p95 {s.p95}, max {s.max} {s.unit}; max_seq_length {s.limit}: "
                           f"{s.over} row(s) would be cut")
        return out


@dataclass
class DataReport:
    options: DataOptions
    splits: List[SplitReport]

    def summary_lines(self) -> List[str]:
        return [line for split in self.splits for line in split.lines()]

    def files(self) -> List[LoadedFile]:
        return [f for split in self.splits for f in split.files]

    def checksums(self) -> Dict[str, str]:
        return {str(f.path): file_checksum(f.path) for f in self.files()}


def has_chat_template(model_dir: Path) -> bool:
    config = model_dir / "tokenizer_config.json"
    if any((model_dir / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def chat_tokenizer(spec):
    """The tokenizer source for the chat template at submit: the model's, when it is already on disk and transformers is here."""
    cache: dict = {}

    def load():
        if "tokenizer" in cache:
            return cache["tokenizer"]
        model_dir = Path(spec.model.hf_path or "").expanduser()
        tokenizer = None
        if spec.model.hf_path and (model_dir / "tokenizer_config.json").is_file():
            if not has_chat_template(model_dir):
                raise UserError(
                    f"template=chat: the tokenizer in model.hf_path={spec.model.hf_path} has no chat template "
                    "(no chat_template in tokenizer_config.json); choose a field template, e.g. template=plain "
                    "or model.data.train_ds.prompt_template='{input} {output}'."
                )
            try:
                from transformers import AutoTokenizer
            except ImportError:
                tokenizer = None
            else:
                tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        cache["tokenizer"] = tokenizer
        return tokenizer

    return load


def _check_keys(spec, options: DataOptions, splits: List[SplitFiles]) -> None:
    if options.format not in FORMAT_NAMES:
        raise UserError(f"data.format={options.format}: not one of {', '.join(FORMAT_NAMES)}."
                        f"{did_you_mean(options.format, FORMAT_NAMES)}")
    if spec.backend.name == "nemo" and options.chat_template:
        raise UserError("data.chat_template=true (template=chat): not available on the nemo backend (NeMo 24.03 "
                        "would read the template's special tokens as plain text); use a field template such as "
                        "template=llama2-chat, or backend=hf.")
    for split in splits:
        if not split.files and split.name != "test":
            raise UserError(f"{split.key} is empty; name the {split.name} file(s), e.g. {split.key}=[/path/{split.name}.jsonl].")
    train = splits[0]
    if len(train.weights) != len(train.files):
        raise UserError(
            f"model.data.train_ds.concat_sampling_probabilities={list(train.weights)}: {len(train.weights)} value(s) "
            f"for {len(train.files)} train file(s); give one probability per file, e.g. "
            f"[{','.join([str(round(1 / len(train.files), 3))] * len(train.files))}]."
        )
    if any(w < 0 for w in train.weights) or sum(train.weights) <= 0:
        raise UserError(f"model.data.train_ds.concat_sampling_probabilities={list(train.weights)}: probabilities "
                        "must be >= 0 with a positive sum.")


def check_job_data(spec, *, dry_run: bool, notes: List[str], with_test: Optional[bool] = None) -> DataReport:
    """Read and render every file of the job's splits; refuse bad data before anything is queued.

    A missing file is refused (in a dry run it is a note). The test split is checked when an eval runs."""
    options = options_from_spec(spec)
    if with_test is None:  # the eval job reads it; else only when it is there (a later `hpc-ft eval` reads it)
        test_files = list(spec.model.data.test_ds.file_names)
        with_test = bool(spec.eval) or bool(test_files) and all(Path(f).expanduser().exists() for f in test_files)
    splits = splits_from_spec(spec, ("train", "validation", "test") if with_test else ("train", "validation"))
    _check_keys(spec, options, splits)
    tokenizer = chat_tokenizer(spec)
    counter = None
    loaded: Dict[str, LoadedFile] = {}
    reports = []
    for split in splits:
        report = SplitReport(split)
        for name in split.files:
            if dry_run and not Path(name).expanduser().exists():
                report.missing.append(name)
                notes.append(f"{split.key}: {name} does not exist yet (a real submit refuses a missing file)")
                continue
            key = str(Path(name).expanduser().resolve())
            if key not in loaded:
                loaded[key] = load_file(name, options, tokenizer)
            report.files.append(loaded[key])
        if any(uses_chat_template(options, f.format.name) for f in report.files) and tokenizer() is None:
            notes.append(f"data {split.name}: the chat template is applied in the job (model.hf_path has no "
                         "tokenizer yet, or transformers is not installed here)")
        rendered = [f for f in report.files if f.template is not None]
        if rendered:
            counter = counter or token_counter(spec.model.hf_path)
            report.lengths = _lengths(rendered, counter, int(spec.model.data.train_ds.max_seq_length))
        reports.append(report)
    return DataReport(options, reports)


#: above this many kept rows, the length percentiles come from a seeded sample of this size; the rows over
#: max_seq_length are still counted exactly (every row that could be over it is tokenized)
SAMPLE_ROWS = 10_000


def _lengths(files: List[LoadedFile], counter, limit: int) -> LengthSummary:
    """Tokens per kept row: a field template's pieces are counted one by one, as NeMo tokenizes them (each
    distinct value once); a chat template's text whole. Plus BOS and EOS for a field template.

    Past SAMPLE_ROWS rows (with a real tokenizer) a seeded sample is tokenized for p50/p95/max. The rows over
    the limit are counted exactly when few rows could be over it by their UTF-8 size (byte-level BPE,
    SentencePiece with byte fallback and WordPiece make at most one token per byte of a piece, plus one);
    when most could, the count is estimated from the sample, and the summary says so."""
    n_rows = sum(len(f.labels) for f in files)
    if not counter.exact or n_rows <= SAMPLE_ROWS:
        return summarize([n for f in files for n in _row_lengths(f, counter, None)], limit, counter.unit)
    import random

    rng = random.Random(0)
    sample: List[int] = []
    over = 0
    longest = 0
    estimated = False
    for f in files:
        n = len(f.labels)
        share = min(n, max(1, round(SAMPLE_ROWS * n / n_rows)))
        picked = sorted(rng.sample(range(n), share))
        candidates = [i for i, bound in enumerate(_row_bounds(f)) if bound > limit]
        if len(candidates) > 2 * share:  # most rows could be over it (e.g. 3-byte characters): estimate instead
            counts = _row_lengths(f, counter, picked)
            over += round(sum(1 for c in counts if c > limit) * n / share)
            estimated = True
        else:
            wanted = sorted(set(picked) | set(candidates))
            counted = dict(zip(wanted, _row_lengths(f, counter, wanted)))
            counts = [counted[i] for i in picked]
            over += sum(1 for i in candidates if counted[i] > limit)
        sample += counts
        longest = max([longest] + counts)
    summary = summarize(sample, limit, counter.unit)
    return LengthSummary(summary.p50, summary.p95, longest, over, limit, counter.unit, sample=len(sample),
                         rows=n_rows, over_estimated=estimated)


def _row_texts(f: LoadedFile) -> List[str]:
    return [p + a for p, a in zip(f.prompts, f.answers)]


def _row_lengths(f: LoadedFile, counter, rows: Optional[List[int]]) -> List[int]:
    """Token counts of the file's kept rows (all of them, or the listed indices in that order)."""
    if isinstance(f.template, FieldTemplate) and f.values:
        return _field_lengths(f, counter, rows)
    extra = 0 if f.specials_in_text else 2
    texts = _row_texts(f)
    return [n + extra for n in counter.count(texts if rows is None else [texts[i] for i in rows])]


def _row_bounds(f: LoadedFile) -> List[int]:
    """At most how many tokens each kept row can have: one per UTF-8 byte of each piece, plus one per piece
    (a SentencePiece word boundary) and BOS/EOS."""
    if isinstance(f.template, FieldTemplate) and f.values:
        return _field_totals(f, None, lambda texts: [len(str(t).encode("utf-8")) + 1 for t in texts])
    return [len(t.encode("utf-8")) + 2 for t in _row_texts(f)]


def _distinct_counts(counter, texts: List[str]) -> List[int]:
    distinct = list(dict.fromkeys(texts))
    sizes = dict(zip(distinct, counter.count(distinct)))
    return [sizes[t] for t in texts]


def _field_lengths(f: LoadedFile, counter, rows: Optional[List[int]] = None) -> List[int]:
    return _field_totals(f, rows, lambda texts: _distinct_counts(counter, texts))


def _field_totals(f: LoadedFile, rows: Optional[List[int]], measure) -> List[int]:
    """Per kept row (all, or the listed indices), the sum of `measure` over the template's literal pieces and
    the values of the fields its form uses, plus 2 (BOS and EOS). `measure(texts)` gives one figure per text."""
    template = f.template
    short_all = template.uses_short_form(f.values.get("input", [""] * len(f.labels)))
    short = short_all if rows is None else [short_all[i] for i in rows]
    pieces = {form: template.pieces(form) for form in set(short)}
    fixed = {form: sum(measure(literals)) + 2 for form, (literals, _) in pieces.items()}
    totals = [fixed[form] for form in short]
    for name, column in f.values.items():
        column = column if rows is None else [column[i] for i in rows]
        sizes = measure(column)
        totals = [t + (size if name in pieces[form][1] else 0) for t, size, form in zip(totals, sizes, short)]
    return totals


# ---- what the backend reads ----------------------------------------------------------------------------
def needs_nemo_conversion(report: DataReport) -> bool:
    """NeMo 24.03 reads jsonl rows and applies prompt_template itself: anything else is converted at submit."""
    o = report.options
    return any(f.format.name != "nemo" or f.data.kind != "json" or isinstance(f.template, ChatTemplate)
               for f in report.files()) or bool(o.prompt_template_no_input)


@dataclass
class BackendData:
    """What the backend reads: run.json's data record, and the converted files still to write (nemo)."""

    record: Dict[str, object]
    pending: List[tuple] = field(default_factory=list)    # (path, LoadedFile) to write as NeMo jsonl

    def write(self) -> Dict[str, object]:
        """Write the converted files (into the run folder, once it exists); their sha256 go into the record."""
        for path, loaded in self.pending:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                for prompt, answer in zip(loaded.prompts, loaded.answers):
                    handle.write(json.dumps({"input": prompt, "output": answer}, ensure_ascii=False) + "\n")
            self.record["converted"][str(path)]["sha256"] = file_checksum(path)
        self.pending = []
        return self.record


def backend_data_files(spec, report: DataReport, run_dir: Path) -> BackendData:
    """For the nemo backend, point file_names at NeMo jsonl under <run_dir>/data/ (written by .write()).

    The record: {"files": {path: sha256} of the user's files, "converted": {new path: {"from", "rows",
    "sha256"}}, "file_names": {split: [paths the job reads]}}. Nothing is written here."""
    result = BackendData({"files": report.checksums(), "converted": {}})
    if spec.backend.name == "nemo" and needs_nemo_conversion(report):
        if any(split.missing for split in report.splits):
            raise UserError("data: some files are not there yet, so they cannot be converted for NeMo; "
                            "prepare them first (`hpc-ft data prepare`).")
        out_dir = Path(run_dir) / "data"
        for split in report.splits:
            names = []
            for i, f in enumerate(split.files):
                path = out_dir / (f"{split.split.name}.jsonl" if i == 0 else f"{split.split.name}-{i + 1}.jsonl")
                result.record["converted"][str(path)] = {"from": str(f.path), "rows": len(f.prompts), "sha256": None}
                result.pending.append((path, f))
                names.append(str(path))
            spec.model.data[f"{split.split.name}_ds"].file_names = names
        ds = spec.model.data.train_ds
        ds.prompt_template, ds.label_key = NEMO_CONVERTED_TEMPLATE, "output"
        spec.data.format, spec.data.prompt_template_no_input, spec.data.columns = "nemo", None, {}
    result.record["file_names"] = {s.split.name: list(spec.model.data[f"{s.split.name}_ds"].file_names)
                                   for s in report.splits}
    return result
