"""Build the tiny sweep's data and tokenizer offline, deterministically (already committed; rerun to rebuild).

The data are short question/answer pairs about arithmetic and made-up facts: regular enough that a
4-layer model learns them within one epoch on a CPU, so the eval loss clearly depends on the
learning rate. The tokenizer is a byte-level BPE trained on the same text with ``tokenizers``.

    python examples/tiny-sweep/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
MODEL_DIR = HERE.parent / "tiny-llama"
TRAIN_EXAMPLES, EVAL_EXAMPLES = 768, 64
VOCAB_SIZE = 512  # the tiny model's embedding has 1024 rows: room to spare
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
THINGS = ["apple", "river", "lamp", "garden", "engine", "violin", "castle", "rocket", "island", "kettle"]
NAMES = ["Ada", "Bram", "Chen", "Dara", "Emil", "Fay", "Gus", "Hana", "Ivo", "Jun"]


def example(rng: random.Random) -> dict[str, str]:
    """One prompt/response pair from a few templates with a fixed underlying 'world'."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(50), rng.randrange(50)
        return {"prompt": f"Question: what is {a} plus {b}?", "response": f"Answer: {a} plus {b} is {a + b}."}
    if kind == 1:
        name = rng.choice(NAMES)
        # Each name owns one thing of one colour: a fact to memorise, the same in every example.
        index = NAMES.index(name)
        thing, colour = THINGS[index % len(THINGS)], COLOURS[(3 * index) % len(COLOURS)]
        return {
            "prompt": f"Question: what does {name} own?",
            "response": f"Answer: {name} owns a {colour} {thing}.",
        }
    words = rng.sample(THINGS, 3)
    return {
        "prompt": f"Question: sort {', '.join(words)}.",
        "response": f"Answer: {', '.join(sorted(words))}.",
    }


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL)


def main() -> None:
    rng = random.Random(0)
    rows = [example(rng) for _ in range(TRAIN_EXAMPLES + EVAL_EXAMPLES)]
    write_jsonl(HERE / "data" / "train.jsonl", rows[:TRAIN_EXAMPLES])
    write_jsonl(HERE / "data" / "eval.jsonl", rows[TRAIN_EXAMPLES:])
    tokenizer = build_tokenizer([f"{row['prompt']}\n{row['response']}" for row in rows])
    tokenizer.save_pretrained(MODEL_DIR)
    print(
        f"wrote {TRAIN_EXAMPLES} train and {EVAL_EXAMPLES} eval examples"
        f" and a {len(tokenizer)}-token tokenizer"
    )


if __name__ == "__main__":
    main()
