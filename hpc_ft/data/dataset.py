"""Load a split: read each file, recognise its format, render every row with the template; errors name file:line and a fix.

The one path both the submit-time checks and the hf job take from a file to rendered examples.
Flat formats (nemo, alpaca, columns) are rendered column-wise (100,000 rows in well under a second);
chat rows one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from hpc_ft.data.files import DataFile, read_data_file
from hpc_ft.data.formats import Example, Format, RowError, detect_format
from hpc_ft.data.spec import DataOptions
from hpc_ft.data.templates import (ALPACA_DEFAULT, ALPACA_DEFAULT_NO_INPUT, NEMO_DEFAULT, TEMPLATE_KEY, ChatTemplate,
                                   FieldTemplate, Rendered, Segment, render_field_columns)
from hpc_ft.errors import UserError

Template = Union[FieldTemplate, ChatTemplate]
TokenizerSource = Optional[Callable[[], object]]   # returns a transformers tokenizer (for the chat template) or None


@dataclass
class LoadedFile:
    """One file's rows rendered: prompts, answers (the loss part) and reference labels, rows with an empty answer left out.

    `rendered` gives the same as Rendered objects (segments marked); `template` is None when it is the
    chat template and no tokenizer was at hand (the rows were still read and checked)."""

    data: DataFile
    format: Format
    template: Optional[Template]
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    skipped: int = 0                         # rows with an empty answer: nothing would carry the loss
    examples: list[Example] = field(default_factory=list, repr=False)   # nested (chat) rows only
    values: dict = field(default_factory=dict, repr=False)     # flat rows: each template field's column (kept rows)
    _rendered: Optional[list[Rendered]] = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.data.path

    @property
    def rows(self) -> int:
        return len(self.data)

    def example(self, index: int) -> Rendered:
        """The index-th kept row, rendered (without building the others)."""
        if self._rendered is not None:
            return self._rendered[index]
        p, a = self.prompts[index], self.answers[index]
        return Rendered((Segment(p, False), Segment(a, True)), prompt=p, label=self.labels[index])

    @property
    def specials_in_text(self) -> bool:
        return isinstance(self.template, ChatTemplate)

    @property
    def rendered(self) -> list[Rendered]:
        if self._rendered is None:
            self._rendered = [Rendered((Segment(p, False), Segment(a, True)), prompt=p, label=lab)
                              for p, a, lab in zip(self.prompts, self.answers, self.labels)]
        return self._rendered


def uses_chat_template(options: DataOptions, format_name: str) -> bool:
    """template=chat, or chat rows with no field template chosen."""
    return options.chat_template or (options.prompt_template is None and format_name in ("chat", "sharegpt"))


def field_template(options: DataOptions, format_name: str) -> FieldTemplate:
    """The chosen field template, or the format's default (NeMo's '{input} {output}'; alpaca's own)."""
    text, no_input = options.prompt_template, options.prompt_template_no_input
    if text is None:
        if format_name == "alpaca":
            text, no_input = ALPACA_DEFAULT, no_input or ALPACA_DEFAULT_NO_INPUT
        else:
            text = NEMO_DEFAULT
    return FieldTemplate(text, options.label_key, no_input)


def make_template(options: DataOptions, format_name: str, tokenizer: TokenizerSource = None) -> Optional[Template]:
    """The template for rows of this format; None when it is the chat template and no tokenizer is at hand."""
    if not uses_chat_template(options, format_name):
        return field_template(options, format_name)
    if options.prompt_template is not None and options.chat_template:
        raise UserError(f"{TEMPLATE_KEY} and template=chat are both set; choose one (drop template=chat "
                        "or the prompt_template).")
    loaded = tokenizer() if tokenizer is not None else None
    return None if loaded is None else ChatTemplate.of(loaded, options.label_key)


def _refuse_dropped_field(template: FieldTemplate, name: str, who: str, where: str) -> None:
    if name not in template.fields:
        raise UserError(
            f"{TEMPLATE_KEY}={template.text!r}: {who} ({where}) carry '{name}', which the template does not use, "
            f"so it would be dropped; add {{{name}}} to the template or pick one that has it (e.g. template=alpaca-ja)."
        )


def _field_values(data: DataFile, fmt: Format, template: FieldTemplate, options: DataOptions) -> dict[str, list[str]]:
    """Each field the template needs, as a column of strings; a missing field or value names file:line."""
    sources = fmt.field_columns(data.columns, options.format_options())
    values: dict[str, list[str]] = {}
    for name in sorted(template.fields):
        column = sources.get(name)
        if column is None and name in fmt.optional_fields:
            values[name] = [""] * len(data)
            continue
        if column is None:
            have = ", ".join(sorted(sources)) or "none"
            raise UserError(
                f"{data.where(0)}: {TEMPLATE_KEY} names {{{name}}} but the rows have no field '{name}' (they have "
                f"{have}); fix the template, or map a column: +data.columns.{name}=<column>."
            )
        raw, null = data.column(column), data.first_null(column)
        if null is not None and name in fmt.optional_fields:
            raw, null = ["" if v is None else v for v in raw], None
        if null is not None:
            raise UserError(f"{data.where(null)}: field '{column}' is missing or null; "
                            f"fill it in or remove that row (format {fmt.name}).")
        values[name] = raw if data.is_text(column) else [_as_text(v, column, data, i) for i, v in enumerate(raw)]
    return values


def _as_text(value, column: str, data: DataFile, index: int) -> str:
    if isinstance(value, (dict, list)):
        raise UserError(f"{data.where(index)}: field '{column}' is a {type(value).__name__}, not text; "
                        "use a text value or another format (data.format).")
    return str(value)


def _load_flat(loaded: LoadedFile, template: FieldTemplate, options: DataOptions) -> None:
    data, fmt = loaded.data, loaded.format
    where = data.where(0)
    if fmt.name == "alpaca":
        _refuse_dropped_field(template, "instruction", "alpaca rows", where)
        if "input" in data.columns and data.any_text("input"):
            _refuse_dropped_field(template, "input", "alpaca rows with an input", where)
        if "system" in data.columns and data.any_text("system"):
            _refuse_dropped_field(template, "system", "alpaca rows with a system field", where)
    if fmt.name == "columns":
        for name in options.columns:
            _refuse_dropped_field(template, name, f"data.columns.{name}", where)
    values = _field_values(data, fmt, template, options)
    prompts, answers, labels = render_field_columns(template, values, len(data))
    if all(map(str.strip, labels)):
        loaded.prompts, loaded.answers, loaded.labels, loaded.values = prompts, answers, labels, values
        return
    keep = [i for i, label in enumerate(labels) if label.strip()]
    loaded.skipped = len(labels) - len(keep)
    loaded.prompts, loaded.answers, loaded.labels = ([seq[i] for i in keep] for seq in (prompts, answers, labels))
    loaded.values = {name: [column[i] for i in keep] for name, column in values.items()}


def _load_nested(loaded: LoadedFile, template: Optional[Template], options: DataOptions) -> None:
    data, fmt, fo = loaded.data, loaded.format, options.format_options()
    for index, row in enumerate(data.rows):
        try:
            loaded.examples.append(fmt.to_example(row, fo))
        except RowError as exc:
            raise UserError(f"{data.where(index)}: {exc}; fix that row (format {fmt.name}).") from None
    if template is None:
        return
    if isinstance(template, FieldTemplate) and any(e.messages[0][0] == "system" for e in loaded.examples):
        _refuse_dropped_field(template, "system", "rows with a system turn", data.where(0))
    rendered = []
    for index, example in enumerate(loaded.examples):
        try:
            missing = template.missing_fields(example)
            if missing:
                raise RowError(f"{TEMPLATE_KEY} names {{{missing[0]}}} but the row has no field '{missing[0]}'")
            item = template.render(example)
        except RowError as exc:
            raise UserError(f"{data.where(index)}: {exc}; fix that row or the template.") from None
        if not item.label.strip():
            loaded.skipped += 1
            continue
        rendered.append(item)
    loaded._rendered = rendered
    loaded.prompts = [r.prompt for r in rendered]
    loaded.answers = ["".join(s.text for s in r.segments if s.loss) for r in rendered]
    loaded.labels = [r.label for r in rendered]


def load_file(path: Union[str, Path], options: DataOptions, tokenizer: TokenizerSource = None) -> LoadedFile:
    """Read, recognise and render one file; every problem is one UserError naming file:line and a fix."""
    data = read_data_file(path)
    fmt = detect_format(options.format, data.columns, options.format_options(), str(data.path))
    template = make_template(options, fmt.name, tokenizer)
    loaded = LoadedFile(data=data, format=fmt, template=template)
    if fmt.field_columns is not None and isinstance(template, FieldTemplate):
        _load_flat(loaded, template, options)
    else:
        _load_nested(loaded, template, options)
    if template is not None and not loaded.labels:
        raise UserError(f"{data.path}: all {len(data)} rows have an empty answer, so the split is empty after "
                        f"filtering; fill in the answers (field '{options.label_key}' or the assistant turns).")
    return loaded


def load_split(files, options: DataOptions, tokenizer: TokenizerSource = None) -> list[LoadedFile]:
    return [load_file(f, options, tokenizer) for f in files]
