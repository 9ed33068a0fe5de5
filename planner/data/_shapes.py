"""Rows to training sequences: ``text``, prompt/response and chat ``messages``, with their labels.

The one path from a row to the token ids and labels a trial trains on, used by the executor's recipe
and by the planner's counting alike, so both count the same tokens:

* ``text``: the text's ids plus EOS, every token a target.
* prompt/response (alpaca's instruction/input/output too): ``prompt\\nresponse`` plus EOS; with
  ``completion_only`` the first ``len(tokenize(prompt))`` tokens get label -100 (the prompt-length
  method of TRL's SFTTrainer for prompt-completion rows, trl/trainer/sft_trainer.py, which warns
  when the two tokenizations disagree at the boundary; here a merged token counts as response).
* chat ``messages``: rendered and tokenized by ``tokenizer.apply_chat_template`` (the template ends
  turns with its own tokens; no EOS appended); with ``completion_only`` only the tokens inside the
  template's ``{% generation %}`` blocks are targets (``return_assistant_tokens_mask``).

Labels are -100 where no loss is taken, as ``transformers``' causal-LM losses ignore them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from planner.errors import ConfigError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from planner.schema import DataSpec

logger = logging.getLogger(__name__)

IGNORED = -100
"""The label ``transformers`` losses skip (``CrossEntropyLoss(ignore_index=-100)``)."""
PROMPT_NAMES = ("prompt", "instruction")
RESPONSE_NAMES = ("response", "output", "completion")
# The marker apply_chat_template needs for an assistant mask: transformers' own test of a template
# (utils/chat_template_utils.py, render_jinja_template), which otherwise only warns.
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class TokenRow:
    """One training row: token ids and their labels (``IGNORED`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        """Tokens with a loss target."""
        return sum(label != IGNORED for label in self.labels)


@dataclass(frozen=True)
class _Columns:
    """The columns each shape reads, as found in the rows (None where absent)."""

    text: str | None
    prompt: str | None
    input: str | None
    response: str | None
    messages: str | None


def _resolve_columns(rows: datasets.Dataset, data: DataSpec, field: str) -> _Columns:
    present = list(rows.column_names)
    given = data.columns

    def pick(name: str, defaults: Sequence[str]) -> str | None:
        explicit = getattr(given, name)
        if explicit is not None:
            if explicit not in present:
                raise ConfigError(
                    f"data.columns.{name}",
                    f"{field} has no column '{explicit}' (it has {', '.join(present)})",
                    "name one of those",
                )
            return str(explicit)
        return next((column for column in defaults if column in present), None)

    columns = _Columns(
        text=pick("text", ("text",)),
        prompt=pick("prompt", PROMPT_NAMES),
        input=pick("input", ("input",)),
        response=pick("response", RESPONSE_NAMES),
        messages=pick("messages", ("messages",)),
    )
    needed = {
        "text": [("text", columns.text)],
        "prompt_response": [("prompt", columns.prompt), ("response", columns.response)],
        "chat": [("messages", columns.messages)],
    }
    if data.format != "auto":
        for name, column in needed[data.format]:
            if column is None:
                raise ConfigError(
                    f"data.columns.{name}",
                    f"{field} has no {name} column for format '{data.format}' (it has {', '.join(present)})",
                    f"set data.columns.{name} to the column that holds it",
                )
    elif not any(all(column for _, column in shape) for shape in needed.values()):
        raise ConfigError(
            "data.format",
            f"{field} rows have columns {', '.join(present)}: none of text, prompt/response "
            "(instruction/output), messages",
            "set data.format and data.columns to the columns that hold them",
        )
    return columns


def _shape_of(row: dict[str, Any], columns: _Columns, data: DataSpec) -> str | None:
    """The row's shape: the spec's format, or under ``auto`` the first whose columns are filled."""
    candidates = [data.format] if data.format != "auto" else ["chat", "text", "prompt_response"]
    for shape in candidates:
        if shape == "chat" and columns.messages and row.get(columns.messages):
            return shape
        if shape == "text" and columns.text and isinstance(row.get(columns.text), str):
            return shape
        if (
            shape == "prompt_response"
            and columns.prompt
            and columns.response
            and isinstance(row.get(columns.prompt), str)
            and isinstance(row.get(columns.response), str)
        ):
            return shape
    return None


def _prompt_of(row: dict[str, Any], columns: _Columns) -> str:
    assert columns.prompt is not None
    prompt = str(row[columns.prompt])
    extra = row.get(columns.input) if columns.input else None
    return f"{prompt}\n{extra}" if isinstance(extra, str) and extra.strip() else prompt


def _check_completion_only(shapes: Sequence[str], data: DataSpec, field: str) -> None:
    if data.completion_only and "text" in shapes:
        raise ConfigError(
            "data.completion_only",
            f"{field} has plain text rows, which have no prompt to leave out of the loss",
            "set completion_only: false, or give prompt/response or chat rows",
        )


def _classified(
    rows: datasets.Dataset, data: DataSpec, field: str
) -> tuple[_Columns, list[dict[str, Any]], list[str]]:
    """The columns, the rows as dicts, and each row's shape."""
    columns = _resolve_columns(rows, data, field)
    records: list[dict[str, Any]] = list(rows)
    shapes = []
    for number, row in enumerate(records, start=1):
        shape = _shape_of(row, columns, data)
        if shape is None:
            expected = data.format if data.format != "auto" else "text, prompt/response or messages"
            raise ConfigError(field, f"row {number} has no {expected} filled in", "fix or drop that row")
        shapes.append(shape)
    _check_completion_only(shapes, data, field)
    return columns, records, shapes


def _plain_text(row: dict[str, Any], shape: str, columns: _Columns) -> tuple[str, str | None]:
    """A text or prompt/response row as the text trained on, and its prompt (None for text)."""
    if shape == "text":
        return str(row[str(columns.text)]), None
    prompt = _prompt_of(row, columns)
    return f"{prompt}\n{row[str(columns.response)]}", prompt


def render_texts(rows: datasets.Dataset, data: DataSpec, field: str) -> list[str]:
    """Each row's text without a tokenizer (the byte-proxy count): text, or ``prompt\\nresponse``.

    Chat rows need the tokenizer's chat template, so they are refused here.
    """
    columns, records, shapes = _classified(rows, data, field)
    if "chat" in shapes:
        raise ConfigError(
            "data.tokenizer",
            f"{field} has chat rows, rendered with the tokenizer's chat template; no tokenizer is here",
            "set data.tokenizer to a directory with tokenizer files and a chat template",
        )
    return [_plain_text(row, shape, columns)[0] for row, shape in zip(records, shapes, strict=True)]


def tokenize_rows(
    rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, data: DataSpec, field: str
) -> list[TokenRow]:
    """Every row as token ids and labels, untruncated, in order."""
    columns, records, shapes = _classified(rows, data, field)
    chats = [i for i, shape in enumerate(shapes) if shape == "chat"]
    plain = [i for i, shape in enumerate(shapes) if shape != "chat"]
    result: dict[int, TokenRow] = {}
    if chats:
        conversations = [records[i][str(columns.messages)] for i in chats]
        result.update(zip(chats, _chat_sequences(conversations, tokenizer, data, field), strict=True))
    if plain:
        texts, prompts = zip(*(_plain_text(records[i], shapes[i], columns) for i in plain), strict=True)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = tokenizer(list(texts))["input_ids"]
        # Prompts are tokenized alone: their length is how many leading tokens take no loss.
        prompt_lengths = [len(ids) for ids in tokenizer([p or "" for p in prompts])["input_ids"]]
        for i, ids, prompt, prompt_length in zip(plain, encoded, prompts, prompt_lengths, strict=True):
            full = list(ids) + eos
            masked = min(prompt_length, len(full)) if data.completion_only and prompt is not None else 0
            result[i] = TokenRow(full, [IGNORED] * masked + full[masked:])
    return [result[i] for i in range(len(shapes))]


def _chat_sequences(
    conversations: list[Any], tokenizer: PreTrainedTokenizerBase, data: DataSpec, field: str
) -> list[TokenRow]:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(
            "data.chat_template",
            f"{field} has chat rows and the tokenizer has no chat template",
            "set data.chat_template to a Jinja template file, or use a tokenizer that ships one",
        )
    if data.completion_only and not _GENERATION.search(str(template)):
        raise ConfigError(
            "data.completion_only",
            "the chat template marks no assistant tokens ({% generation %} blocks) to keep in the loss",
            "set data.chat_template to a template with {% generation %} around assistant turns, "
            "or completion_only: false",
        )
    for number, conversation in enumerate(conversations, start=1):
        if not isinstance(conversation, list) or not all(
            isinstance(message, dict) and "role" in message and "content" in message
            for message in conversation
        ):
            raise ConfigError(
                f"data.columns.messages ({field})",
                f"row {number}'s messages are not a list of {{role, content}}",
                "fix that row, or name the right column",
            )
    try:
        encoded = tokenizer.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=data.completion_only
        )
    except Exception as exc:  # a template raising (jinja's TemplateError, raise_exception) on a row
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            "data.chat_template",
            f"the chat template fails on {field} ({detail})",
            "fix the template or the rows",
        ) from None
    sequences = []
    batch: Mapping[str, Any] = encoded  # type: ignore[assignment]  # tokenize and return_dict: a BatchEncoding
    for position, ids in enumerate(batch["input_ids"]):
        ids = list(ids)
        if data.completion_only:
            mask = batch["assistant_masks"][position]
            labels = [token if keep else IGNORED for token, keep in zip(ids, mask, strict=True)]
        else:
            labels = list(ids)
        sequences.append(TokenRow(ids, labels))
    return sequences


def fit_to_length(sequences: Sequence[TokenRow], seq_len: int, packing: bool) -> list[TokenRow]:
    """The rows the trainer sees: each cut at ``seq_len``; or with packing all concatenated and cut
    into ``seq_len`` blocks (the last one shorter).

    A row left with no loss target (a completion-only prompt longer than ``seq_len``) is left out:
    it trains nothing, and a micro-batch of only such rows would divide the loss by zero items
    (transformers' causal-LM loss sums over targets and divides by their count), a NaN that would
    stop the trial as diverged.
    """
    if not packing:
        rows = [TokenRow(s.input_ids[:seq_len], s.labels[:seq_len]) for s in sequences]
    else:
        ids = [token for s in sequences for token in s.input_ids]
        labels = [label for s in sequences for label in s.labels]
        rows = [
            TokenRow(ids[start : start + seq_len], labels[start : start + seq_len])
            for start in range(0, len(ids), seq_len)
        ]
    kept = [row for row in rows if row.trained_tokens]
    if len(kept) < len(rows):
        logger.info(
            "%d of %d rows have no loss target within seq_len %d: left out",
            len(rows) - len(kept),
            len(rows),
            seq_len,
        )
    return kept
