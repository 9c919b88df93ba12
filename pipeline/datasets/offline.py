"""The offline text sets the project writes itself, so air-gapped runs and tests work.

Deterministic for a seed: prose, dialogue, code, numbers and several languages,
built from templates. Used for calibration, evaluation, the gate's prompts and
for training the tiny test model.
"""

from __future__ import annotations

import random
from pathlib import Path

from pipeline.datasets.jsonl import write_jsonl_dataset

SUBJECTS = [
    "The engineer",
    "A small team",
    "The river",
    "Our model",
    "The library",
    "A farmer",
    "The city council",
    "The old printer",
    "A student",
    "The satellite",
]
VERBS = [
    "measured",
    "rebuilt",
    "described",
    "followed",
    "questioned",
    "compressed",
    "painted",
    "translated",
    "scheduled",
    "observed",
]
OBJECTS = [
    "the bridge",
    "a quiet harbour",
    "every request",
    "the winter harvest",
    "a long report",
    "the engine",
    "the northern road",
    "a list of numbers",
    "the morning train",
    "an unusual cloud",
]
ENDINGS = [
    "before the sun went down.",
    "with great care.",
    "and wrote down what changed.",
    "for the third time.",
    "while the others waited.",
    "without a single error.",
    "as the rain began.",
    "in under an hour.",
]
NAMES = ["Ada", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana"]
QUESTIONS = [
    "How long does the build take?",
    "Can you explain the plan?",
    "What is the batch size?",
    "Where did you put the report?",
    "Why did the test fail?",
    "Which GPU should we use?",
]
ANSWERS = [
    "About ten minutes on a warm cache.",
    "First we fetch, then we calibrate and build.",
    "Eight requests at a time.",
    "In the reports folder, next to the manifest.",
    "The threshold was too strict for the new data.",
    "An A100 with forty gigabytes is enough.",
]
FOREIGN = [
    "Le chat dort sur la chaise pendant que la pluie tombe.",
    "Nous avons mesuré la vitesse du modèle deux fois.",
    "Der Zug fährt um acht Uhr nach Berlin.",
    "Die Ergebnisse sind gut, aber wir prüfen sie noch einmal.",
    "El equipo terminó el informe antes de la reunión.",
    "La biblioteca abre a las nueve de la mañana.",
    "Il modello risponde in meno di un secondo.",
    "O relatório está na pasta de resultados.",
]
CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)\n",
    "if batch_size > max_batch:\n    raise ValueError('batch too large')\n",
    "numbers = [3, 1, 4, 1, 5, 9, 2, 6]\ntotal = sum(numbers)\n",
    "with open(path) as f:\n    lines = f.read().splitlines()\n",
]


def _prose(rng: random.Random) -> str:
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
        for _ in range(rng.randint(2, 5))
    )


def _dialogue(rng: random.Random) -> str:
    turns = []
    for _ in range(rng.randint(2, 3)):
        i = rng.randrange(len(QUESTIONS))
        a, b = rng.sample(NAMES, 2)
        turns.append(f"{a}: {QUESTIONS[i]}\n{b}: {ANSWERS[i]}")
    return "\n".join(turns)


def _numbers(rng: random.Random) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    return (
        f"{a} plus {b} is {a + b}. {a} times {b} is {a * b}. "
        f"The sequence {', '.join(str(a + k * b) for k in range(5))} grows by {b} each step."
    )


def _foreign(rng: random.Random) -> str:
    return " ".join(rng.sample(FOREIGN, 3))


def _code(rng: random.Random) -> str:
    return "".join(rng.sample(CODE, 2))


KINDS = {"prose": _prose, "dialogue": _dialogue, "numbers": _numbers, "multilingual": _foreign, "code": _code}


def offline_texts(count: int, seed: int) -> list[dict[str, str]]:
    """`count` records {"kind", "text"}, cycling through every kind."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    return [{"kind": kinds[i % len(kinds)], "text": KINDS[kinds[i % len(kinds)]](rng)} for i in range(count)]


def offline_prompts(count: int, seed: int) -> list[dict[str, str]]:
    """Short prompts for greedy-generation checks: the opening of an offline text."""
    out = []
    for record in offline_texts(count, seed):
        words = record["text"].split(" ")
        out.append({"kind": record["kind"], "prompt": " ".join(words[: max(4, len(words) // 3)])})
    return out


# The object phrases whose last word the words before it decide: "a quiet" is always "a quiet harbour".
_DECIDED_OBJECTS = [o for o in OBJECTS if len(o.split()) > 2 or o.split()[0] in ("a", "an", "every")]


def next_word_items(count: int, seed: int) -> list[dict]:
    """Multiple choice (the gate's tiny_next_word task): a prose clause cut before its object's last
    word, the choices every such last word. Chance is 1 in len(_DECIDED_OBJECTS)."""
    rng = random.Random(seed)
    nouns = [o.split()[-1] for o in _DECIDED_OBJECTS]
    items = []
    for i in range(count):
        target = i % len(_DECIDED_OBJECTS)
        lead = " ".join(_DECIDED_OBJECTS[target].split()[:-1])
        context = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {lead}"
        items.append({"context": context, "choices": nouns, "answer": target})
    return items


def dialogue_items(count: int, seed: int) -> list[dict]:
    """Generation (the gate's tiny_dialogue task): a question turn and the next speaker's name; the
    answer is the line the offline dialogues always give to that question."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        q = i % len(QUESTIONS)
        a, b = rng.sample(NAMES, 2)
        items.append({"context": f"{a}: {QUESTIONS[q]}\n{b}:", "answer": ANSWERS[q]})
    return items


OFFLINE_SETS = {
    # file name -> (builder, count, seed, text field)
    "offline-mix.jsonl": (offline_texts, 512, 1234, "text"),
    "offline-eval.jsonl": (offline_texts, 128, 4321, "text"),
    "prompts.jsonl": (offline_prompts, 32, 777, "prompt"),
    # The lm-evaluation-harness tasks of calib_data/tasks/ (their YAMLs sit beside them).
    "tasks/tiny_next_word.jsonl": (next_word_items, 64, 2024, "context"),
    "tasks/tiny_dialogue.jsonl": (dialogue_items, 24, 2025, "context"),
}


def write_offline_sets(calib_dir: Path) -> list[Path]:
    """(Re)write the offline sets and their manifests into calib_dir."""
    written = []
    for name, (build, count, seed, field) in OFFLINE_SETS.items():
        written.append(
            write_jsonl_dataset(
                calib_dir / name,
                build(count, seed),
                origin=f"generated by pipeline.datasets.offline.{build.__name__}(count={count}, seed={seed})",
                license="Apache-2.0 (written by this project)",
                text_field=field,
            )
        )
    return written
