"""CHILDES text rules for replies: how a generated or decoded child reply is cleaned, and when it is rejected.

Plain functions of text, shared by the teacher (cleaning and resampling its replies), the rewards (words, echoes,
speaker tags) and DPO (the paper's synthetic replies written the CHILDES way). See llamalogue.teacher.llm for why each
rule exists.
"""

import re

SPEAKER = r"(?:\*?[A-Z]{3}|(?i:mother|mommy|mom|mummy|mum|child|kid|baby))(?i: says)?\s*:"  # *CHI: MOT: Child says:
LEADING_TAG = re.compile(rf"^\W*{SPEAKER}\s*")
LATER_TAG = re.compile(rf"\s{SPEAKER}")
STAGE_DIRECTION = re.compile(r"\*[^*]*\*|\([^)]*\)|\[[^\]]*\]")
TERMINATOR = re.compile(r"[.?!]+(?=\s|$)")
PRONOUN_I = {"i", "i'm", "i'll", "i've", "i'd"}


def clean_reply(text: str) -> str:
    """A generated continuation -> one CHILDES-style child utterance ("" when nothing usable is left)."""
    text = text.split("\n")[0].replace("\u2019", "'").replace("\u2018", "'")
    text = LEADING_TAG.sub("", text.strip())
    later = LATER_TAG.search(text)
    if later:
        text = text[: later.start()]
    text = STAGE_DIRECTION.sub(" ", text).replace('"', " ").replace("\u201c", " ").replace("\u201d", " ")
    end = TERMINATOR.search(text)
    terminator = "."
    if end:
        terminator = "?" if "?" in end.group() else "!" if "!" in end.group() else "."
        text = text[: end.start()]
    text = re.sub(r"[^\w' ,-]", " ", text.lower()).replace(",", " , ")
    words = [w.strip("'-") for w in text.split()]
    words = [("I" + w[1:] if w in PRONOUN_I else w) for w in words if w]
    while words and words[0] == ",":
        words.pop(0)
    while words and words[-1] == ",":
        words.pop()
    words = [w for i, w in enumerate(words) if not (w == "," and i and words[i - 1] == ",")]
    return " ".join(words + [terminator]) if any(w != "," for w in words) else ""


def content_words(text: str) -> list[str]:
    """Lowercased words without punctuation or speaker tags: what echo, loop, BLEU and length look at."""
    return re.findall(r"[a-z0-9']+", LEADING_TAG.sub("", text).lower())


def is_echo(reply: str, prompt: str) -> bool:
    """>= 80% of the reply's words sit inside a word bigram that also occurs in the prompt (or the reply is the
    prompt's only word): the reply repeats her words instead of answering."""
    words, said = content_words(reply), content_words(prompt)
    if not words:
        return False
    if len(said) == 1 or len(words) == 1:
        return words == said
    said_bigrams = set(zip(said, said[1:]))
    covered = [False] * len(words)
    for i, bigram in enumerate(zip(words, words[1:])):
        if bigram in said_bigrams:
            covered[i] = covered[i + 1] = True
    return sum(covered) >= 0.8 * len(words)


def is_loop(reply: str) -> bool:
    """A unit of 1-4 words repeated back to back: 4 copies of one word, or 3 copies of a longer unit."""
    words = content_words(reply)
    for size in range(1, 5):
        copies = 4 if size == 1 else 3
        for start in range(len(words) - size * copies + 1):
            unit = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == unit for k in range(1, copies)):
                return True
    return False


REJECT_REASONS = ("empty", "echo", "copy", "loop", "unfinished")
REPLY_RULES = 2  # in the cache key: bump when cleaning or rejection changes, so old replies are not reused


def reject_reason(reply: str, prompt: str, finished: bool = True, shown=()) -> str | None:
    """Why a cleaned reply is not kept -- "empty", "echo", "copy" (the same words as one of the example replies
    `shown` in its context), "loop", "unfinished" -- or None when it is fine."""
    words = content_words(reply)
    if not words:
        return "empty"
    if is_loop(reply):
        return "loop"
    if is_echo(reply, prompt):
        return "echo"
    if any(words == content_words(example) for example in shown):
        return "copy"
    if not finished:
        return "unfinished"
    return None


def without_speaker_tag(line: str) -> str:
    """An utterance without its CHAT speaker tag: `*MOT: what is it ?` -> `what is it ?` (`*CHI: ` likewise). Prompts
    reach the teacher this way, and replies reach the rewards this way."""
    return re.sub(r"^\*[A-Z]{3}:\s*", "", line.strip())


def paper_first_utterance(text: str) -> str:
    """The paper's extract_first_utterance: the text before a new `Mother`/`Child` turn, else its first line up to
    and including the first `.`, `?` or `!` (the whole line when it has none), stripped."""
    text = text.strip()
    for turn in ("\nMother", "\n Mother", "\nChild", "\n Child"):
        if turn in text:
            return text[: text.index(turn)].strip()
    line = text.split("\n")[0]
    end = re.search(r"[.?!]", line)
    return (line[: end.end()] if end else line).strip()
