"""The JSONL cache of teacher replies: each prompt's K replies and their log-likelihoods, computed once and kept.

PPO's teacher references (TeacherReferences: BLEU, SemSim, confidence) and the synthetic DPO set read their replies
from it, so a run never waits twice for the teacher, and a killed run resumes where it stopped.

One JSONL line per (teacher, prompt, settings, seed) holds the prompt, its replies and their log-likelihoods. Lines
are appended and flushed batch by batch, so a killed run resumes where it stopped (a torn last line is dropped). An
entry with K replies also serves a request for fewer (the first ones). Each batch is sampled under a seed derived
from the run's seed and the batch's prompts, so a rerun reproduces a batch.
"""

import hashlib
import json
import os
from pathlib import Path

from tqdm import tqdm

from llamalogue.teacher.reply_text import without_speaker_tag
from llamalogue.corpus.dialogue_files import BadLines


REPLY_BATCHES = 8  # batches of replies per call of Teacher.reply (teacher_replies)


class ReplyCache:
    """Teacher replies on disk, one JSON line per (teacher settings, prompt, seed):
    {"key", "prompt", "seed", "settings", "replies", "logliks", "reasons", "rejected"} (reasons: why a reply that
    never came out clean was kept anyway, else null; rejected: the reasons of its rejected draws).
    Appending is flushed and fsynced per batch; a torn last line (a kill mid-write) is cut off on opening, and a
    record that is not whole is skipped and counted (its prompt is answered again)."""

    def __init__(self, path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # a kill mid-write: drop the torn line
                raw = raw[: raw.rfind(b"\n") + 1]
                with open(self.path, "r+b") as f:
                    f.truncate(len(raw))
            bad = BadLines(self.path)
            for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
                try:
                    record = self._valid(json.loads(line))
                except ValueError as error:  # json.JSONDecodeError is one: skipped, its prompt answered again
                    bad.add(number, str(error))
                    continue
                self.entries[record["key"]] = self._better(self.entries.get(record["key"]), record)
            bad.report(len(self.entries), "cached prompts", required=False)

    @staticmethod
    def _valid(record) -> dict:
        """The record, if it is one the cache wrote: a key, and one log-likelihood per reply (a record with 3 of its
        10 log-likelihoods would make the confidence reward rank against 3)."""
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise ValueError("not a teacher-cache record (no key)")
        replies, logliks = record.get("replies"), record.get("logliks")
        if not isinstance(replies, list) or not replies or not all(isinstance(r, str) for r in replies):
            raise ValueError("no replies")
        if not isinstance(logliks, list) or len(logliks) != len(replies) or not all(
                isinstance(x, (int, float)) for x in logliks):
            raise ValueError(f"{len(logliks) if isinstance(logliks, list) else 'no'} log-likelihoods for "
                             f"{len(replies)} replies")
        for field in ("reasons", "rejected"):
            if len(record.get(field) or []) != len(replies):
                raise ValueError(f"{field} do not match the {len(replies)} replies")
        return record

    @staticmethod
    def _better(old, new):
        return new if old is None or len(new["replies"]) >= len(old["replies"]) else old

    @staticmethod
    def key(settings: dict, prompt: str, seed: int) -> str:
        return hashlib.sha256(json.dumps([settings, prompt, seed], sort_keys=True).encode()).hexdigest()[:24]

    def get(self, settings: dict, prompt: str, seed: int, n: int) -> dict | None:
        """The cached entry when it holds at least n replies, cut to the first n."""
        entry = self.entries.get(self.key(settings, without_speaker_tag(prompt), seed))
        if entry is None or len(entry["replies"]) < n:
            return None
        return {**entry, **{field: entry[field][:n] for field in ("replies", "logliks", "reasons", "rejected")}}

    def add(self, records: list[dict]):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.entries[record["key"]] = self._better(self.entries.get(record["key"]), record)
            f.flush()
            os.fsync(f.fileno())


def teacher_replies(teacher, prompts: list[str], n: int, seed: int = 0, cache: ReplyCache | None = None,
                    progress: bool = False) -> list[dict]:
    """The cache entry (n replies + log-likelihoods) of every prompt, computing and appending the missing ones."""
    prompts = [without_speaker_tag(p) for p in prompts]
    settings = teacher.settings()
    found = {p: cache.get(settings, p, seed, n) for p in set(prompts)} if cache else {}
    by_set: dict[int, list[str]] = {}  # a batch holds prompts of one example set: they share their whole prefix
    for prompt in dict.fromkeys(prompts):
        if found.get(prompt) is None:
            by_set.setdefault(teacher.shot_set(prompt), []).append(prompt)
    # prompts per call of teacher.reply, which samples them in batches of batch_size sequences: enough for
    # REPLY_BATCHES batches, so that the rejected replies it draws again fill batches too; the cache is appended
    # after each call, and a killed run loses at most one call's work
    chunk = max(1, REPLY_BATCHES * teacher.config.batch_size // n)
    batches = [group[start : start + chunk] for group in by_set.values() for start in range(0, len(group), chunk)]
    bar = tqdm(total=sum(map(len, batches)) * n, unit="reply", desc=f"teacher x{n}", disable=not progress,
               dynamic_ncols=True)
    for batch in batches:
        replies = teacher.reply(batch, n=n, seed=seed)
        texts = [r["text"] for rs in replies for r in rs]
        logliks = teacher.loglik([p for p in batch for _ in range(n)], texts)
        records = []
        for j, (prompt, rs) in enumerate(zip(batch, replies)):
            records.append({
                "key": ReplyCache.key(settings, prompt, seed), "prompt": prompt, "seed": seed, "settings": settings,
                "replies": [r["text"] for r in rs], "logliks": logliks[j * n : (j + 1) * n],
                "reasons": [r["reason"] for r in rs], "rejected": [r["rejected"] for r in rs],
            })
        for record in records:
            found[record["prompt"]] = record
        if cache:
            cache.add(records)
        bar.update(len(batch) * n)
    bar.close()
    return [found[p] for p in prompts]


class TeacherReferences:
    """The teacher's n replies (and their log-likelihoods) per prompt, from the JSONL cache or computed now."""

    def __init__(self, teacher, path=None, n: int = 1, seed: int = 0, index: int = 0):
        self.teacher, self.n, self.seed, self.index = teacher, n, seed, index
        self.cache = ReplyCache(path) if path else None
        self.memory: dict[str, dict] = {}

    def entries(self, prompts: list[str], progress: bool = False) -> list[dict]:
        prompts = [without_speaker_tag(p) for p in prompts]
        missing = [p for p in dict.fromkeys(prompts) if p not in self.memory]
        if missing:
            for entry in teacher_replies(self.teacher, missing, self.n, self.seed, self.cache, progress):
                self.memory[entry["prompt"]] = entry
        return [self.memory[p] for p in prompts]

    def reference_replies(self, prompts: list[str]) -> list[str]:
        """The one reference reply per prompt that BLEU and SemSim compare with."""
        return [entry["replies"][self.index] for entry in self.entries(prompts)]

    def prepare(self, prompts: list[str]) -> None:
        """Answer every prompt of the run now (from the JSONL cache, or sampled and appended), so that no PPO step
        waits for the teacher to answer the mother. All at once: the prompts of an example set share batches."""
        self.entries(prompts, progress=True)
