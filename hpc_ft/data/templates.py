"""Templates: turn an Example into text whose loss-carrying part is marked (NeMo-syntax field templates, or the tokenizer's chat template).

A field template is NeMo's `prompt_template` syntax: text with field names in braces, the answer field
(`label_key`, default `output`) last: `{input} {output}`. Everything before the answer field is the
prompt; the answer (with the spaces right before it, as NeMo splits a template, and any text after
it) carries the loss. The chat template is the tokenizer's own
(`apply_chat_template`): every assistant turn carries the loss, every other turn is masked.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable, Mapping

from hpc_ft.data.formats import Example, RowError
from hpc_ft.errors import UserError

TEMPLATE_KEY = "model.data.train_ds.prompt_template"
NEMO_DEFAULT = "{input} {output}"   # NeMo's own default prompt_template
# What a format is rendered with when no template is chosen (nemo keeps NeMo's default).
ALPACA_DEFAULT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n"
                  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}")
ALPACA_DEFAULT_NO_INPUT = ("Below is an instruction that describes a task. "
                           "Write a response that appropriately completes the request.\n\n"
                           "### Instruction:\n{instruction}\n\n### Response:\n{output}")
LOSS_OPEN, LOSS_CLOSE = "[[LOSS>>", "<<LOSS]]"


@dataclass(frozen=True)
class Segment:
    text: str
    loss: bool


@dataclass(frozen=True)
class Rendered:
    """An example as text: segments (loss or not), the generation prompt and the reference answer.

    `specials_in_text`: the text already holds the model's special tokens (a chat template writes
    BOS and end-of-turn itself); otherwise the tokenizer's BOS goes first and EOS after the answer.
    """

    segments: tuple[Segment, ...]
    prompt: str
    label: str
    specials_in_text: bool = False

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    def marked(self) -> str:
        """The text with each loss-carrying part between [[LOSS>> and <<LOSS]]."""
        return "".join(f"{LOSS_OPEN}{s.text}{LOSS_CLOSE}" if s.loss else s.text for s in self.segments)


def template_fields(text: str, key: str = TEMPLATE_KEY) -> list[str]:
    """The field names of a NeMo-syntax template, in order; a malformed template is a UserError naming `key`."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise UserError(f"{key}={text!r}: {exc}; write fields as {{name}} and a literal brace as {{{{ or }}}}.") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise UserError(f"{key}={text!r}: '{{{name}{'!' + conversion if conversion else ''}"
                            f"{':' + spec if spec else ''}}}' is not a field name; use plain {{field}} names.")
        names.append(name)
    return names


class FieldTemplate:
    """NeMo's prompt_template: fields in braces, the answer field last; an optional variant for rows whose `input` is empty."""

    kind = "fields"

    def __init__(self, text: str, label_key: str = "output", no_input_text: str | None = None,
                 key: str = TEMPLATE_KEY):
        self.text, self.label_key, self.no_input_text = text, label_key, no_input_text
        self._lead: dict[str, str] = {}    # per form: the spaces before the answer field (part of the answer)
        self._parts = {text: self._split(text, key)}
        if no_input_text:
            self._parts[no_input_text] = self._split(no_input_text, "data.prompt_template_no_input")

    def _split(self, text: str, key: str) -> tuple[list[tuple[str, str | None]], str]:
        names = template_fields(text, key)
        if names.count(self.label_key) != 1 or names[-1] != self.label_key:
            raise UserError(
                f"{key}={text!r}: must hold the answer field {{{self.label_key}}} once, as its last field "
                f"(model.data.train_ds.label_key={self.label_key}); e.g. '{{input}} {{{self.label_key}}}'."
            )
        parsed = list(string.Formatter().parse(text))
        before = [(literal, name) for literal, name, _, _ in parsed]
        idx = next(i for i, (_, name) in enumerate(before) if name == self.label_key)
        after = "".join(literal for literal, _ in before[idx + 1:])
        # As NeMo splits a template ('( *?{.+?})'): spaces right before the answer field belong to the answer.
        literal = before[idx][0]
        kept = literal.rstrip(" ")
        self._lead[text] = literal[len(kept):]
        return before[:idx] + [(kept, self.label_key)], after

    @property
    def fields(self) -> set[str]:
        return {name for parts, _ in self._parts.values() for _, name in parts if name}

    def pieces(self, no_input: bool = False) -> tuple[list[str], list[str]]:
        """(literal texts, field names) of the template, or of its no-input form: NeMo tokenizes them piece by piece."""
        form = self.no_input_text if no_input and self.no_input_text else self.text
        parts, after = self._parts[form]
        literals = [literal for literal, _ in parts if literal] + [x for x in (self._lead[form], after) if x]
        return literals, [n for _, n in parts if n]

    def uses_short_form(self, inputs: list) -> list[bool]:
        """Which rows (by their `input`) take the no-input form."""
        if not self.no_input_text:
            return [False] * len(inputs)
        return [not text.strip() for text in inputs]

    def _text_for(self, values: Mapping[str, str]) -> str:
        if self.no_input_text and not values.get("input", "").strip():
            return self.no_input_text
        return self.text

    def missing_fields(self, example: Example) -> list[str]:
        values = self._values(example)
        parts, _ = self._parts[self._text_for(values)]
        return [name for _, name in parts if name and name not in values]

    def _values(self, example: Example) -> Mapping[str, str]:
        if not example.is_chat:
            return example.fields
        turns = list(example.messages)
        system = turns.pop(0)[1] if turns and turns[0][0] == "system" else None
        if [role for role, _ in turns] != ["user", "assistant"]:
            raise RowError(f"a conversation of {len(example.messages)} turns needs template=chat (the tokenizer's "
                           "chat template); a field template takes one user and one assistant turn")
        values = {"input": turns[0][1], self.label_key: turns[1][1]}
        if system is not None:
            values["system"] = system
        return values

    def render(self, example: Example) -> Rendered:
        values = self._values(example)
        form = self._text_for(values)
        parts, after = self._parts[form]
        missing = [name for _, name in parts if name and name not in values]
        if missing:
            raise RowError(f"the template names {{{missing[0]}}} but the row has no field '{missing[0]}'")
        prompt = "".join(literal + (values[name] if name and name != self.label_key else "") for literal, name in parts)
        answer = self._lead[form] + values[self.label_key] + after
        return Rendered((Segment(prompt, False), Segment(answer, True)), prompt=prompt, label=values[self.label_key])


def _prompt_format(parts, label_key: str) -> tuple[str, list[str]]:
    """A str.format pattern of the prompt part and the fields it takes, in order."""
    pattern = "".join(literal.replace("{", "{{").replace("}", "}}") + ("{}" if name and name != label_key else "")
                      for literal, name in parts)
    return pattern, [name for _, name in parts if name and name != label_key]


def render_field_columns(template: "FieldTemplate", values: Mapping[str, list], n: int):
    """(prompts, answers, labels) of n rows from each field's column of strings: the fast path of render()."""
    def prompts_of(text):
        parts, after = template._parts[text]
        pattern, names = _prompt_format(parts, template.label_key)
        columns = [values[name] for name in names]
        return ([pattern.format(*row) for row in zip(*columns)] if columns else [pattern] * n), after, template._lead[text]

    labels = values[template.label_key]
    prompts, after, lead = prompts_of(template.text)
    if not template.no_input_text:
        return prompts, ([lead + label + after for label in labels] if after or lead else list(labels)), labels
    short, short_after, short_lead = prompts_of(template.no_input_text)
    empty = [not text.strip() for text in values.get("input") or [""] * n]
    prompts = [b if e else a for a, b, e in zip(prompts, short, empty)]
    answers = [(short_lead + label + short_after) if e else (lead + label + after) for label, e in zip(labels, empty)]
    return prompts, answers, labels


def example_messages(example: Example, label_key: str = "output") -> list[dict]:
    """Chat turns of an example; field rows become [system], user (instruction and input), assistant (the answer)."""
    if example.is_chat:
        return [{"role": role, "content": content} for role, content in example.messages]
    f = example.fields
    if label_key not in f:
        raise RowError(f"the row has no field '{label_key}' (the answer)")
    user = "\n\n".join(part for part in (f.get("instruction", ""), f.get("input", "")) if part)
    turns = [{"role": "system", "content": f["system"]}] if f.get("system") else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": f[label_key]}]


class ChatTemplate:
    """The tokenizer's chat template (apply_chat_template): each assistant turn carries the loss, every other turn is masked."""

    kind = "chat"
    fields: set = frozenset()

    def __init__(self, apply: Callable[..., str], label_key: str = "output"):
        self._apply = apply          # tokenizer.apply_chat_template
        self.label_key = label_key

    @classmethod
    def of(cls, tokenizer, label_key: str = "output") -> "ChatTemplate":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "template=chat: this model's tokenizer has no chat template (no chat_template in "
                "tokenizer_config.json); choose a field template, e.g. template=plain or "
                "model.data.train_ds.prompt_template='{input} {output}'."
            )
        return cls(tokenizer.apply_chat_template, label_key)

    def missing_fields(self, example: Example) -> list[str]:
        return [] if example.is_chat or self.label_key in example.fields else [self.label_key]

    def _text(self, messages: list[dict], generation: bool) -> str:
        return self._apply(messages, tokenize=False, add_generation_prompt=generation)

    def render(self, example: Example) -> Rendered:
        messages = example_messages(example, self.label_key)
        segments, done, prompt, label = [], "", "", ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._text(messages[:i], True)
            upto = self._text(messages[: i + 1], False)
            if not before.startswith(done) or not upto.startswith(before):
                raise RowError("the tokenizer's chat template does not render a conversation turn by turn "
                               "(an earlier turn changes when a later one is added); use a field template")
            segments += [Segment(before[len(done):], False), Segment(upto[len(before):], True)]
            done, prompt, label = upto, before, message["content"]
        rest = self._text(messages, False)[len(done):]
        if rest:
            segments.append(Segment(rest, False))
        return Rendered(tuple(s for s in segments if s.text), prompt=prompt, label=label, specials_in_text=True)
