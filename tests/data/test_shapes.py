"""Datasets through ``datasets``: every file kind, saved and cached hub datasets, each row shape and
its labels, packing; one-line errors for what a user gets wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from planner.data import IGNORED, fit_to_length, load_tokenizer, read_rows, read_sequences
from planner.errors import ConfigError
from planner.schema import SweepSpec
from tests.executor.conftest import tiny_chat_model

ROWS = [
    {"prompt": "the red one", "response": "is blue"},
    {"prompt": "alpha and beta", "response": "gamma delta one two"},
    {"prompt": "three", "response": "green"},
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "the one"},
            {"role": "user", "content": "red and blue"},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "one two"},
            {"role": "assistant", "content": "three alpha"},
        ]
    },
    {"messages": [{"role": "user", "content": "beta"}, {"role": "assistant", "content": "gamma is delta"}]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_model(tmp_path_factory.mktemp("data") / "tiny-chat")


def spec_for(directory: Path, model_dir: Path, **data: Any) -> SweepSpec:
    return SweepSpec.model_validate(
        {"base": {"model": str(model_dir), "seq_len": 16}, "data": data, "spec_dir": directory}
    )


def sequences(spec: SweepSpec) -> list[tuple[list[int], list[int]]]:
    tokenizer = load_tokenizer(spec)
    assert tokenizer is not None
    return [(row.input_ids, row.labels) for row in read_sequences(spec, tokenizer, "train")]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_every_file_kind_and_saved_datasets_give_the_same_rows(tmp_path: Path, model_dir: Path) -> None:
    import datasets
    import pyarrow as pa

    expected = sequences(spec_for(tmp_path, model_dir, train=str(write_jsonl(tmp_path / "d.jsonl", ROWS))))
    table = pa.Table.from_pylist(ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text(
        "prompt,response\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in ROWS)
    )
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(tmp_path / "saved-dict"))
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "part.jsonl", ROWS)
    for name in ("d.json", "d.csv", "d.parquet", "d.arrow", "saved", "saved-dict", "folder"):
        assert sequences(spec_for(tmp_path, model_dir, train=name)) == expected, name
    one = spec_for(tmp_path, model_dir, train="saved-dict", split="test")
    assert len(read_rows(one, "train")) == 1
    with pytest.raises(ConfigError, match=r"data.split: .*no split 'dev' \(it has train, test\)"):
        read_rows(spec_for(tmp_path, model_dir, train="saved-dict", split="dev"), "train")


def test_a_hub_dataset_is_read_from_the_local_cache_only(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache laid out as ``datasets`` leaves it (``owner___name/config/version/hash``), built here
    by the json builder; the hub is never asked (offline mode is forced)."""
    import datasets

    build = tmp_path / "build"
    source = write_jsonl(tmp_path / "d.jsonl", ROWS)
    datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(build))
    built = next(build.glob("json/*/*/*/dataset_info.json")).parent
    cached = tmp_path / "cache" / "someone___tiny_qa" / "default" / "0.0.0" / "0123abcd"
    cached.mkdir(parents=True)
    info = json.loads((built / "dataset_info.json").read_text())
    (cached / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}))
    shutil.copy(built / "json-train.arrow", cached / "tiny_qa-train.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # "someone/tiny_qa" is no local path
    offline = datasets.config.HF_HUB_OFFLINE

    hub = sequences(spec_for(tmp_path, model_dir, train="someone/tiny_qa"))
    assert hub == sequences(spec_for(tmp_path, model_dir, train=str(source)))
    with pytest.raises(
        ConfigError, match=r"data.train: no file .*no hub dataset 'someone/other'.*local cache"
    ):
        read_rows(spec_for(tmp_path, model_dir, train="someone/other"), "train")
    assert offline == datasets.config.HF_HUB_OFFLINE  # forced for the load only


def test_prompt_response_completion_only_masks_the_prompt(tmp_path: Path, model_dir: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    whole = sequences(spec_for(tmp_path, model_dir, train=str(path)))
    masked = sequences(spec_for(tmp_path, model_dir, train=str(path), completion_only=True))
    tokenizer = load_tokenizer(spec_for(tmp_path, model_dir, train=str(path)))
    assert tokenizer is not None
    for row, (ids, labels), (same_ids, all_labels) in zip(ROWS, masked, whole, strict=True):
        assert ids == same_ids and all_labels == ids and ids[-1] == tokenizer.eos_token_id
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        assert labels == [IGNORED] * prompt + ids[prompt:]
        response = tokenizer.decode([t for t in labels if t != IGNORED], skip_special_tokens=True)
        assert response == row["response"]


def test_alpaca_instruction_input_output(tmp_path: Path, model_dir: Path) -> None:
    alpaca = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "the red one", "input": "and blue", "output": "green"},
            {"instruction": "three", "input": "", "output": "green"},
        ],
    )
    plain = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "the red one\nand blue", "response": "green"}, ROWS[2]]
    )
    assert sequences(spec_for(tmp_path, model_dir, train=str(alpaca), completion_only=True)) == sequences(
        spec_for(tmp_path, model_dir, train=str(plain), completion_only=True)
    )
    renamed = write_jsonl(tmp_path / "r.jsonl", [{"q": r["prompt"], "a": r["response"]} for r in ROWS])
    given = spec_for(
        tmp_path,
        model_dir,
        train=str(renamed),
        format="prompt_response",
        columns={"prompt": "q", "response": "a"},
    )
    assert sequences(given) == sequences(
        spec_for(tmp_path, model_dir, train=str(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    )


def test_chat_rows_use_the_template_and_mask_all_but_the_assistant(tmp_path: Path, model_dir: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", CHATS)
    spec = spec_for(tmp_path, model_dir, train=str(path), completion_only=True)
    tokenizer = load_tokenizer(spec)
    assert tokenizer is not None
    for chat, (ids, labels) in zip(CHATS, sequences(spec), strict=True):
        assert (
            ids
            == tokenizer.apply_chat_template(chat["messages"], tokenize=True, return_dict=True)["input_ids"]
        )
        trained = tokenizer.decode([t for t in labels if t != IGNORED])
        answers = [m["content"] for m in chat["messages"] if m["role"] == "assistant"]
        assert trained.split() == " </s> ".join([*answers, ""]).split()


def test_packing_keeps_every_token_and_label(tmp_path: Path, model_dir: Path) -> None:
    spec = spec_for(
        tmp_path, model_dir, train=str(write_jsonl(tmp_path / "c.jsonl", CHATS * 3)), completion_only=True
    )
    tokenizer = load_tokenizer(spec)
    assert tokenizer is not None
    rows = read_sequences(spec, tokenizer, "train")
    packed = fit_to_length(rows, 16, packing=True)
    assert all(len(row.input_ids) == 16 for row in packed[:-1]) and 0 < len(packed[-1].input_ids) <= 16
    assert [t for row in packed for t in row.input_ids] == [t for row in rows for t in row.input_ids]
    assert sum(row.trained_tokens for row in packed) == sum(row.trained_tokens for row in rows)


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ({"train": "missing.parquet"}, "data.train", "does not exist"),
        (
            {"train": "c.jsonl", "columns": {"messages": "turns"}},
            "data.columns.messages",
            "no column 'turns'",
        ),
        ({"train": "c.jsonl", "format": "text"}, "data.columns.text", "no text column"),
        ({"train": "t.jsonl", "completion_only": True}, "data.completion_only", "no prompt"),
        (
            {"train": "c.jsonl", "completion_only": True, "chat_template": "plain.jinja"},
            "data.completion_only",
            "generation",
        ),
        ({"train": "c.jsonl", "chat_template": "missing.jinja"}, "data.chat_template", "does not exist"),
        ({"train": "o.jsonl"}, "data.format", "none of text"),
    ],
)
def test_bad_data_gets_one_line_naming_the_field(
    tmp_path: Path, model_dir: Path, data: dict[str, Any], field: str, problem: str
) -> None:
    write_jsonl(tmp_path / "c.jsonl", CHATS)
    write_jsonl(tmp_path / "t.jsonl", [{"text": "one two"}])
    write_jsonl(tmp_path / "o.jsonl", [{"body": "one two"}])
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    with pytest.raises(ConfigError) as raised:
        sequences(spec_for(tmp_path, model_dir, **data))
    message = str(raised.value)
    assert message.startswith(f"{field}:") and problem in message and "\n" not in message


def test_chat_rows_need_a_chat_template(tmp_path: Path) -> None:
    from tests.executor.conftest import tiny_model

    model_dir = tiny_model(tmp_path / "no-template")
    spec = spec_for(tmp_path, model_dir, train=str(write_jsonl(tmp_path / "c.jsonl", CHATS)))
    with pytest.raises(ConfigError, match=r"^data.chat_template: .*no chat template"):
        sequences(spec)


def test_rows_left_without_a_target_are_left_out(tmp_path: Path, model_dir: Path) -> None:
    """A prompt longer than seq_len leaves its row no target: it is dropped (its loss would be 0/0)."""
    long_prompt = {"prompt": " ".join(["alpha"] * 30), "response": "beta"}
    spec = spec_for(
        tmp_path,
        model_dir,
        train=str(write_jsonl(tmp_path / "d.jsonl", [*ROWS, long_prompt])),
        completion_only=True,
    )
    tokenizer = load_tokenizer(spec)
    assert tokenizer is not None
    rows = read_sequences(spec, tokenizer, "train")
    assert len(rows) == 4 and all(row.trained_tokens for row in rows)
    fitted = fit_to_length(rows, 16, packing=False)
    assert len(fitted) == 3 and all(row.trained_tokens for row in fitted)
