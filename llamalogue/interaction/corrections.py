"""The teacher's correction of a child's reply: the BabyLM interaction baseline's instruction, adapted to dialogue.

The baseline shows its teacher a partial text and the student's continuation and asks for "a corrected version of
the student's completion ... grammatically correct, coherent and relevant to the initial partial text", its own
completion where the student's is gibberish. Here the partial text is the caregiver's turn and the completion the
child's reply (CORRECTION_PROMPT). The correction is then

    y_w = the first |y_l| tokens of the teacher's cleaned reply,   |y_l| = the student's reply length in tokens

(`cut_to_length`, in the student's tokenizer, as the baseline cuts its corrections), so SimPO compares replies of
the same length. The baseline's continuations are 256 tokens of running text, where the cut loses little; a child's
reply is 2-6 tokens, where it ends most corrections mid-sentence: `cut="none"` keeps the whole cleaned correction
(SimPO's rewards are per-token averages, so replies of different lengths still compare).

A preamble is taken off first: "Here is the corrected reply:" or "The corrected reply is:" before the correction
(on its line or the next) leaves the correction. What is never trained on, cut or whole: a draw whose first line
holds a speaker tag other than a leading child's one (`Child:` or `*CHI:` before the reply is the teacher labelling
it, and is stripped; a caregiver's tag, `Caregiver:` included, or a tag later in the line, is the teacher writing a
transcript, not a reply), one that llamalogue.teacher.reply_text rejects once cleaned -- empty, a loop, an echo of
the caregiver's turn or of the instruction, unfinished --, one empty once cut, or one about the task rather than a
child's reply ("meta": it names the child, the caregiver, a correction or a response, as 27.6% of SmolLM2-135M's
corrections kept before this rule did: `the child wanted it in the kitchen .`). Such a draw is drawn again, up to
`tries` draws; a reply with no good draw is dropped, and its reason counted in the round's log row (`dropped_*`).

Corrections are kept in RUN/corrections.jsonl, one line per context of a round, with the student's reply they
correct: {"round", "index", "prompt", "reply", "correction" (null: dropped), "reason", "raw", "rejected"}. Lines are
appended and fsynced batch by batch, so a run stopped while the teacher works goes on where it stopped (a torn last
line is dropped), and a resumed round trains on the very pairs it began with.
"""

import json
import os
import re
from collections import Counter
from pathlib import Path

from llamalogue.teacher.llm import stable_seed
from llamalogue.teacher.reply_text import (LATER_TAG, LEADING_TAG, clean_reply, is_echo, reject_reason,
                                           without_speaker_tag)

CORRECTIONS = "corrections.jsonl"

CORRECTION_PROMPT = (
    "You are a caregiver talking with a young child who is learning to speak. You will be given what the caregiver "
    "said (labeled 'Caregiver') and the child's reply (labeled 'Child'). Your goal is to produce a corrected version "
    "of the child's reply. This corrected version should be grammatically correct, coherent and relevant to the "
    "caregiver's turn, and still short and child-like. If the child's reply is gibberish, output your own reply as "
    "the child would give it. You should only provide the corrected reply without any added commentary or feedback."
)


ASK = "Now give the corrected reply of the child. Do not include any commentary."


def correction_messages(prompt: str, reply: str) -> list[dict]:
    """The chat the teacher answers: the instruction, then the caregiver's turn and the child's reply (the baseline
    gives them as separate user turns; one turn here, as some chat templates want user and assistant to alternate)."""
    return [{"role": "system", "content": CORRECTION_PROMPT},
            {"role": "user", "content": f"Caregiver: {without_speaker_tag(prompt)}\nChild: {reply}\n{ASK}"}]


def reply_length(tokenizer, reply: str) -> int:
    """|y|: the tokens of a reply as it follows its speaker tag (`*CHI:`, then " " + the words)."""
    return len(tokenizer.encode(f" {reply}")) if reply.strip() else 0


def cut_to_length(tokenizer, text: str, length: int) -> str:
    """The first `length` tokens of text (as it follows a speaker tag), decoded: the baseline's cut."""
    return tokenizer.decode(tokenizer.encode(f" {text}")[:length]).strip()


def keep_of(tokenizer, correction: str, reply: str, cut: str) -> str:
    """What is trained on: the correction cut to the student's reply length (cut "student"), or whole ("none")."""
    if cut == "student":
        return cut_to_length(tokenizer, correction, reply_length(tokenizer, reply))
    if cut == "none":
        return correction
    raise ValueError(f"cut {cut!r}: student or none")


CHILD_TAG = re.compile(r"^\W*(?:\*?CHI|(?i:child|kid|baby))(?i: says)?\s*:")  # the teacher labelling its reply
CAREGIVER_TAG = re.compile(r"^\W*(?:caregiver|parent|father|daddy|dad)(?: says)?\s*:", re.I)  # writing her turn
# What the teacher may put before its correction ("Here is the corrected reply:", "The corrected reply is:"): the
# correction is what follows the colon, on the same line or the next.
PREAMBLE = re.compile(r"^\W*(?:here is|here's|the corrected|corrected|my correction|this is)\b[^:\n]*:[ \t]*", re.I)
# The teacher talking about the task instead of answering as the child: the child, the caregiver, its correction.
META = re.compile(r"\b(?:the child|child's|caregiver|correct(?:ed|ion)|commentary|response)\b", re.I)


def without_preamble(raw: str) -> str:
    """The teacher's answer after a preamble ending in a colon (the first non-empty line after it); else raw."""
    text = raw.strip()
    preamble = PREAMBLE.match(text)
    if preamble is None:
        return raw
    lines = [line for line in text[preamble.end() :].split("\n") if line.strip()]
    return lines[0] if lines else ""


def draw_reason(answer: str, correction: str, kept: str, prompt: str, finished: bool) -> str | None:
    """Why a teacher's draw is not a correction to train on (None: it is one). answer: the draw after its preamble;
    correction: the answer cleaned; kept: what the cut leaves of it."""
    first_line = CHILD_TAG.sub("", answer.strip().split("\n")[0])
    if LEADING_TAG.match(first_line) or LATER_TAG.search(first_line) or CAREGIVER_TAG.match(first_line):
        return "tag"
    reason = reject_reason(correction, without_speaker_tag(prompt), finished)
    if reason is None and is_echo(correction, f"{CORRECTION_PROMPT} {ASK}"):
        return "echo"  # of the instruction: "now give the corrected reply to the child ."
    if reason is None and not kept:
        return "empty"
    if reason is None and META.search(correction):
        return "meta"
    return reason


def read_corrections(path) -> dict[tuple[int, int], dict]:
    """{(round, index): record} of the corrections file; a torn last line (a kill mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    records = {}
    for line in raw.decode("utf-8").splitlines():
        record = json.loads(line)
        records[(record["round"], record["index"])] = record
    return records


def append_corrections(path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def correct(teacher, tokenizer, items: list[dict], round_: int, seed: int, tries: int, batch_size: int,
            cut: str = "student") -> list[dict]:
    """The corrections of the student's replies `items` ({"index", "prompt", "reply"}), one record each (see the
    module docstring), cut to the student's length (cut "student") or whole ("none"). Every draw of a batch runs
    under a seed of (seed, round, draw, the batch's prompts)."""
    records = [{**item, "round": round_, "correction": None, "reason": None, "raw": None, "rejected": []}
               for item in items]
    for record in records:
        if reply_length(tokenizer, record["reply"]) == 0:
            record["reason"] = "empty reply"  # nothing to correct: the student said nothing
    pending = [r for r in records if r["reason"] is None]
    for draw in range(1, tries + 1):
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            contexts = [teacher.context_ids(correction_messages(r["prompt"], r["reply"])) for r in batch]
            batch_seed = stable_seed(seed, round_, draw, *(r["prompt"] for r in batch))
            texts, stopped = teacher.sample(contexts, [batch_seed])
            for record, raw, finished in zip(batch, texts, stopped):
                answer = without_preamble(raw)
                correction = clean_reply(answer)
                kept = keep_of(tokenizer, correction, record["reply"], cut)
                reason = draw_reason(answer, correction, kept, record["prompt"], finished)
                record.update(raw=raw, reason=reason, correction=None if reason else kept)
                record["rejected"] += [reason] if reason else []
        pending = [r for r in pending if r["reason"] is not None]
        if not pending:
            break
    return records


def round_corrections(path, teacher, tokenizer, items: list[dict], round_: int, seed: int, tries: int,
                      batch_size: int, cut: str, stop=lambda: False, progress=None) -> list[dict] | None:
    """The corrections of a round's items, from the file or asked of the teacher now and appended batch by batch;
    None when stop() asked to stop before all were there (the file keeps what was done)."""
    done = read_corrections(path)
    missing = [item for item in items if (round_, item["index"]) not in done]
    if any(item["reply"] is None for item in missing):  # a round resumed mid-training trains on its file alone
        raise ValueError(f"{path}: round {round_ + 1}'s corrections are missing; the run cannot go on (--overwrite)")
    for start in range(0, len(missing), batch_size):
        if stop():
            return None
        records = correct(teacher, tokenizer, missing[start : start + batch_size], round_, seed, tries, batch_size,
                          cut)
        append_corrections(path, records)
        done.update({(round_, r["index"]): r for r in records})
        if progress:
            progress(len(records))
    return [done[(round_, item["index"])] for item in items]


def dropped_counts(records: list[dict]) -> Counter:
    """Why each dropped reply was dropped: {"tag": 2, "echo": 1, ...} (the reason of its last draw)."""
    return Counter(r["reason"] for r in records if r["correction"] is None)
