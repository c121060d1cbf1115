"""Identity conversations: the model's name, maker, abilities and limits, generated from a small YAML file.

The facts live in ``nanochat/identity.yaml`` (shipped with the package); ``identity_path`` points the task at
your own copy. Example i is generated from random.Random(i) (test: i + 10,000,000): one to three turns on
different topics (greeting, name, maker, what it is, abilities, limits, how it was built, licence, and the
file's own question/answer pairs), with the user's wording varied.
"""
from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from nanochat.common import NanochatError
from nanochat.tasks.base import Task

TEST_SEED_OFFSET = 10_000_000
REQUIRED = ("name", "maker", "description", "abilities", "limitations")
OPTIONAL = ("architecture", "training", "license", "qa")

_ASK = {
    "name": ["What's your name?", "Who are you?", "What should I call you?", "What is your name",
             "Do you have a name?", "Tell me your name."],
    "maker": ["Who made you?", "Who created you?", "Who built you?", "Who trained you?", "Where do you come from?"],
    "what": ["What are you?", "Tell me about yourself.", "Introduce yourself.", "Are you a human?",
             "What kind of AI are you?"],
    "abilities": ["What can you do?", "How can you help me?", "What are you good at?", "What are your skills?"],
    "limits": ["What are your limitations?", "What can't you do?", "Are you always right?",
               "Can you browse the internet?"],
    "build": ["How were you trained?", "How do you work?", "What is your architecture?", "How were you made?"],
    "license": ["What license are you under?", "Can I use your code?"],
}
_GREET = ["Hi!", "Hello", "hey", "Good morning!", "Hi there", "Hello, how are you?"]


def _bullets(items: list[str], prefix: str) -> str:
    return "\n".join(f"- {prefix}{item}" for item in items)


def load_identity(path=None) -> dict:
    """The identity facts from `path` (YAML), or the packaged default; validated, {name}/{maker} filled in."""
    import yaml

    source = str(path) if path is not None else "nanochat/identity.yaml"
    try:
        if path is None:
            text = resources.files("nanochat").joinpath("identity.yaml").read_text(encoding="utf-8")
        else:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as e:
        raise NanochatError(f"cannot read identity file {source}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise NanochatError(f"identity file {source} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise NanochatError(f"identity file {source} must be a mapping of keys to values")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise NanochatError(f"identity file {source}: unknown key(s) {', '.join(unknown)}; "
                            f"known: {', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        if key not in data or data[key] in (None, "", []):
            raise NanochatError(f"identity file {source}: missing key {key!r}")
    facts = {"name": str(data["name"]).strip(), "maker": str(data["maker"]).strip()}

    def fill(value, key):
        if not isinstance(value, (str, int, float)) or not str(value).strip():
            raise NanochatError(f"identity file {source}: {key} must be non-empty text")
        return str(value).strip().replace("{name}", facts["name"]).replace("{maker}", facts["maker"])

    for key in ("description", "architecture", "training", "license"):
        if data.get(key) is not None:
            facts[key] = fill(data[key], key)
    for key in ("abilities", "limitations"):
        if not isinstance(data[key], list):
            raise NanochatError(f"identity file {source}: {key} must be a list of text items")
        facts[key] = [fill(v, f"{key}[{i}]") for i, v in enumerate(data[key])]
    qa = data.get("qa") or []
    if not isinstance(qa, list):
        raise NanochatError(f"identity file {source}: qa must be a list of {{user, assistant}} pairs")
    facts["qa"] = []
    for i, pair in enumerate(qa):
        if not isinstance(pair, dict) or set(pair) != {"user", "assistant"}:
            raise NanochatError(f"identity file {source}: qa[{i}] must have exactly the keys user and assistant")
        facts["qa"].append((fill(pair["user"], f"qa[{i}].user"), fill(pair["assistant"], f"qa[{i}].assistant")))
    return facts


class Identity(Task):
    name = "identity"

    def __init__(self, size: int = 1000, split: str = "train", identity_path=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NanochatError(f"identity size must be a non-negative integer, got {size!r}")
        if split not in ("train", "test"):
            raise NanochatError(f"identity split must be train or test, got {split!r}")
        self.size, self.split = size, split
        self.facts = load_identity(identity_path)
        self.topics = ["name", "maker", "what", "abilities", "limits"]
        if "architecture" in self.facts or "training" in self.facts:
            self.topics.append("build")
        if "license" in self.facts:
            self.topics.append("license")
        self.topics += [f"qa{i}" for i in range(len(self.facts["qa"]))]

    def num_examples(self) -> int:
        return self.size

    def _answer(self, topic: str, rng: random.Random) -> tuple[str, str]:
        f = self.facts
        if topic.startswith("qa"):
            return f["qa"][int(topic[2:])]
        user = rng.choice(_ASK[topic])
        intro = f"I'm {f['name']}, {f['description']}."
        if topic == "name":
            reply = rng.choice([intro, f"My name is {f['name']}.", f"You can call me {f['name']}. I was made by {f['maker']}."])
        elif topic == "maker":
            reply = f"I was made by {f['maker']}." + rng.choice(["", f" I'm {f['name']}, {f['description']}."])
        elif topic == "what":
            reply = f"{intro} I was made by {f['maker']}. I'm an AI language model, not a person."
        elif topic == "abilities":
            reply = f"I'm {f['name']}. I can:\n" + _bullets(f["abilities"], "")
        elif topic == "limits":
            reply = "A few things to keep in mind about me. I:\n" + _bullets(f["limitations"], "")
        elif topic == "build":
            bits = [f"Under the hood I am {f['architecture']}." if "architecture" in f else "",
                    f"I was trained by {f['training']}." if "training" in f else ""]
            reply = " ".join(b for b in bits if b)
        else:  # license
            reply = f"The code that trained me is released under the {f['license']} license."
        return user, reply

    def get_example(self, index: int) -> dict:
        rng = random.Random(index + (TEST_SEED_OFFSET if self.split == "test" else 0))
        messages = []
        if rng.random() < 0.3:
            messages += [{"role": "user", "content": rng.choice(_GREET)},
                         {"role": "assistant", "content": f"Hello! I'm {self.facts['name']}. How can I help you today?"}]
        for topic in rng.sample(self.topics, k=min(len(self.topics), rng.choice([1, 1, 2, 3]))):
            user, reply = self._answer(topic, rng)
            if rng.random() < 0.3:
                user = user.lower().rstrip("?.!")  # lazy typing
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return {"messages": messages}
