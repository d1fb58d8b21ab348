"""CHILDES corpus: read TalkBank XML and CHAT transcripts, clean them, and build llamalogue's data.

    python -m llamalogue.corpus --childes data/childes --out runs/data [--vocab-size 16000]

Pipeline, one function each, in the order the build runs them:

1. `find_transcripts`   every `.xml`, `.xml.gz` and `.cha` file under the given paths.
2. `read_transcript`    TalkBank XML (`read_xml`) or CHAT (`read_chat`) -> `Transcript`, with every utterance cleaned
                        by the same rules (`clean_chat` for CHAT text, `clean_xml_utterance` for XML elements);
                        run in worker processes.
3. `split_transcripts`  whole transcripts -> train / val / dpo / eval (seeded, disjoint, checked).
4. `triplets`           caregiver-child-caregiver windows, written one utterance per line with its speaker tag
                        (`*MOT: what're you making ?`), a blank line after each triplet.
5. `Tokenizer.train`    SentencePiece on train.txt (see llamalogue/tokenizer.py).
6. `natural_pairs`      (mother prompt, the child's real reply, a random child reply from another transcript of the
                        same held-out split), the random reply matched in words or in tokens.

Cleaning keeps what the speaker said and removes transcription codes. Decisions (each rule has a real example in
the docstring of the function applying it, and a test):

- Retraced and repeated material (`[/] [//] [///]`, XML `<g>` + `<k type="retracing...">`) is KEPT together with its
  correction: `no [/] no way ?` -> `no no way ?`. Reasons: it is what the speaker said (disfluencies are part of
  child-caregiver talk, and a dialogue model should see them); the paper's own data keep them (its pair files contain
  `I I don't know .`, `but but I have a hurt finger .`); the shared README counts retraced words as words.
- Repetitions `<a b> [x 3]` (XML `<r times="3"/>`) are written out 3 times, for the same reason.
- Replacements `[: target]` keep the target: `dis [: this] one .` -> `this one .`.
- Fillers `&-uh` (old CHAT `&uh`), fragments `&+fr`, nonwords `&~ss`, events `&=laughs`, untranscribed `xxx yyy www`,
  omitted words `0v` and pauses `(.)` are dropped.
- Compounds `graham_cracker`, `woof+(woof)` become separate words (`graham cracker`, `woof woof`); contractions and
  clitics stay one word as written (`what's`, `don't`); shortenings are filled in (`(th)em` -> `them`); special-form
  markers are cut off the word (`a@l` -> `a`); lengthening `m:hm` -> `mhm`; CA symbols (`↑ ° ⌈ ⌉ ∙`...) removed.
- Tag markers `,` `‡` `„` become ` , `; terminators become ` .` ` ?` ` !` (trail-offs, interruptions and quotation
  terminators by whether they ask: `+...` -> `.`, `+/?` -> `?`).
- An utterance with no word left is dropped and counted by reason: `untranscribed` (it had xxx/yyy/www),
  `filler_or_fragment` (it had only fillers/fragments/nonwords), else `nonverbal` (`0 [=! laughs] .`, events, pauses).
  A dropped utterance still separates its neighbours: triplets and pairs only join utterances that were adjacent.

Speakers: the tag written for an utterance comes from the speaker's ROLE (`ROLE_TAGS`), so the target child is always
`*CHI:` and mothers are always `*MOT:` whatever id the transcript used (`MOM`, `ATT`; children `MAR`, `Julia`...).
Where a transcript declares no `Target_Child` (Lara, Brent, Bloom73, Wooten, some Bates files give the child `CHI` the
role `Child`), the participant `CHI` is taken as the target child.
Caregivers (`CAREGIVER_ROLES`) are the adults who look after or play with the child in the recording: Mother, Father,
Grandmother, Grandfather, Aunt, Uncle, Babysitter, Teacher, Adult, and Investigator (the researcher who plays with the
child, e.g. Colin and Richard with Eve in Brown). Siblings, visitors, camera operators, toys are not caregivers.
"""
from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from llamalogue.tokenizer import Tokenizer

DEFAULT_CHILDES = Path(__file__).resolve().parent.parent / "data" / "childes"
SPLITS = ("train", "val", "dpo", "eval")
DEFAULT_FRACTIONS = {"val": 0.02, "dpo": 0.10, "eval": 0.05}  # train gets the rest
PAIR_SPLITS = ("dpo", "eval")
MIN_VOCAB_SIZE = 400
MIN_PAIR_TOKENS = 4  # the paper's prompts and replies have >= 4 whitespace tokens (terminator included)

CHILD_ROLE = "Target_Child"
CAREGIVER_ROLES = frozenset({"Mother", "Father", "Grandmother", "Grandfather", "Aunt", "Uncle", "Babysitter",
                             "Teacher", "Adult", "Investigator"})
ROLE_TAGS = {  # CHAT role -> speaker tag written in the data; every tag is one tokenizer piece
    "Target_Child": "*CHI:", "Mother": "*MOT:", "Father": "*FAT:", "Grandmother": "*GRM:", "Grandfather": "*GRF:",
    "Aunt": "*AUN:", "Uncle": "*UNC:", "Babysitter": "*SIT:", "Teacher": "*TEA:", "Adult": "*ADU:",
    "Investigator": "*INV:", "Sister": "*SIS:", "Brother": "*BRO:", "Sibling": "*SIB:", "Cousin": "*COU:",
    "Child": "*KID:", "Playmate": "*PLA:", "Visitor": "*VIS:", "Family_Friend": "*FRI:", "Camera_Operator": "*OPE:",
    "Observer": "*OBS:", "Clinician": "*CLI:", "Doctor": "*DOC:", "Student": "*STU:", "Teenager": "*TEE:",
    "Participant": "*PAR:", "Toy": "*TOY:", "Environment": "*ENV:", "Non_Human": "*NON:", "Group": "*GRP:",
}
OTHER_TAG = "*OTH:"  # undeclared speakers and roles not in ROLE_TAGS ("Unidentified", ...)
SPEAKER_TAGS = tuple(sorted(set(ROLE_TAGS.values()) | {OTHER_TAG}))

TALKBANK = "{http://www.talkbank.org/ns/talkbank}"


class CorpusError(Exception):
    """Bad input that stops the build: the message is one line naming the file, line or argument."""


@dataclass(frozen=True, slots=True)
class Participant:
    id: str
    role: str
    age: str | None = None  # CHAT notation years;months.days, e.g. "1;06" or "2;01.15"


@dataclass(frozen=True, slots=True)
class Utterance:
    speaker: str     # the transcript's speaker id ("MOT", "MOM", "CHI", ...)
    role: str        # the speaker's role ("Mother", "Target_Child", ...)
    text: str        # cleaned words and terminator: "what're you making ?"
    terminator: str  # ".", "?" or "!"
    index: int       # position among ALL main-tier utterances of the transcript (dropped ones included)

    @property
    def line(self) -> str:
        """The utterance as written in the data: `*MOT: what're you making ?`."""
        return f"{speaker_tag(self.role)} {self.text}"


@dataclass(slots=True)
class Transcript:
    corpus: str
    file: str                                   # transcript id: path below the input root, without extension
    participants: dict[str, Participant]
    utterances: list[Utterance]                 # the kept (non-empty) utterances, in order
    dropped: Counter = field(default_factory=Counter)   # utterances (and lines) left out, by reason
    warnings: list[str] = field(default_factory=list)   # "file:line: message"


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: str    # "*MOT: what is that ?"
    chosen: str    # "*CHI: it looks like a gun ."
    rejected: str  # "*CHI: you do it like that ."


def speaker_tag(role: str) -> str:
    return ROLE_TAGS.get(role, OTHER_TAG)


# ----------------------------------------------------------------------------------------------------------------
# Cleaning: shared by both readers (words, terminators, empty utterances)

_UNTRANSCRIBED = frozenset({"xxx", "yyy", "www", "xx", "yy"})
# CA and other transcription symbols that are not speech; deleted wherever they stand (also inside words)
_DELETED_SYMBOLS = "↑↓⇗↗→↘⇘∞≈≋°∆∇⁎⁇∬∮↻⁑⌈⌉⌊⌋‖“”‹›∙▔≠ˈˌ§"
_WORD_DELETIONS = str.maketrans("", "", "():^~" + _DELETED_SYMBOLS)
_SPECIAL_FORM = re.compile(r"@.*")


@functools.lru_cache(maxsize=1 << 16)  # the same few thousand words come back all the time: clean each once
def clean_word(word: str) -> tuple[str, ...]:
    """The spoken words in one transcribed word: codes removed, compounds split (shared by CHAT and XML).

    Shortenings are filled in, special-form markers (`@o` onomatopoeia, `@l` letter, `@b` babbling, `@c` child
    form, `@s:fra` second language...) cut off, lengthening `:` and clitic/blocking marks deleted, compounds split:
    >>> clean_word("(th)em"), clean_word("a@l"), clean_word("m:hm")      # bernstein, brown_eve01.cha
    (('them',), ('a',), ('mhm',))
    >>> clean_word("graham_cracker"), clean_word("woof+(woof)"), clean_word("boom_boom_boom_boom@o")
    (('graham', 'cracker'), ('woof', 'woof'), ('boom', 'boom', 'boom', 'boom'))

    A word that is only a transcription code leaves nothing: untranscribed `xxx yyy www`, omitted words `0v`,
    fillers and fragments `&-uh &+fr` (also after cleaning), and anything without a letter or digit:
    >>> clean_word("xxx"), clean_word("0v"), clean_word("(&)uh"), clean_word("..")
    ((), (), (), ())
    """
    parts = _SPECIAL_FORM.sub("", word).translate(_WORD_DELETIONS).replace("_", " ").replace("+", " ").split()
    return tuple(part for part in parts
                 if part not in _UNTRANSCRIBED and part[0] not in "&0" and any(ch.isalnum() for ch in part))


def _finish(words: list[str], terminator: str, flags: set[str]) -> tuple[str, str | None]:
    """Join the words and terminator, or name why the utterance is dropped when no word is left.

    Commas at either end and repeated commas are removed (`&-um , yes .` -> `yes .`, not `, yes .`).
    """
    kept: list[str] = []
    for word in words:
        if word != "," or (kept and kept[-1] != ","):
            kept.append(word)
    while kept and kept[-1] == ",":
        kept.pop()
    if not kept:
        for reason in ("untranscribed", "filler_or_fragment"):
            if reason in flags:
                return "", reason
        return "", "nonverbal"
    return " ".join(kept) + " " + terminator, None


# ----------------------------------------------------------------------------------------------------------------
# Cleaning CHAT main tiers

_BULLET = re.compile("\x15[^\x15]*\x15")  # media time alignment: \x15 12345_12890 \x15
_REPLACEMENT = re.compile(r"(?:<[^<>]*>|[^\s<>\[\]]+)\s*\[::? ([^\]]*)\]")
_REPETITION = re.compile(r"(<[^<>]*>|[^\s<>\[\]]+)\s*\[x\s*(\d+)\s*\]")
MAX_REPETITIONS = 30
_ANNOTATION = re.compile(r"\[[^\]]*\]")
_TAG_MARKERS = str.maketrans({"‡": " , ", "„": " , ", "<": None, ">": None,
                              **{chr(c): " " for c in range(32)}})  # control characters (stray bullet marks)
_TERMINATOR_OR_LINKER = re.compile(r"[.?!]|\+[^\w\s]*")
_PAUSE = re.compile(r"\((?:\.+|[\d.:]+)\)")


def _terminator_mark(code: str) -> str | None:
    """`.` `?` `!` for a CHAT terminator (`+...` trail off -> `.`, `+/?` interrupted question -> `?`),
    None for a linker that starts an utterance (`+<` `++` `+^` `+"` `+,`)."""
    for mark in "?!.":
        if mark in code:
            return mark
    return None


def apply_replacements(text: str) -> str:
    """`word [: target]` and `<words> [: target]`: the target replaces what was said.

    >>> apply_replacements("dis [: this] one and dis [: this] one .").split()            # bates_snack28_amy.cha
    ['this', 'one', 'and', 'this', 'one', '.']
    """
    return _REPLACEMENT.sub(lambda match: f" {match.group(1)} ", text)


def expand_repetitions(text: str) -> str:
    """`word [x 3]`, `<words> [x 3]`: said 3 times, so written 3 times (like retracings, repetitions are kept).
    Counts above MAX_REPETITIONS (the corpus has at most 23) are cut to it.

    >>> expand_repetitions("<dolly xxx> [x 2] .").split()   # the 2013 XML of brown_eve01 as CHAT (<r times="5"/>)
    ['dolly', 'xxx', 'dolly', 'xxx', '.']
    """
    return _REPETITION.sub(lambda m: f" {m.group(1).strip('<>')} " * min(int(m.group(2)), MAX_REPETITIONS), text)


def remove_annotations(text: str) -> str:
    """Every other bracketed code goes: postcodes `[+ IMP]`, retracing markers `[/] [//] [///]` (the retraced
    words stay), overlaps `[<] [>]`, comments `[= ...] [=! laughs] [% ...]`, `[?] [!] [*]`, precodes `[- fra]`.

    >>> remove_annotations("more cookie . [+ IMP]").split()                              # brown_eve01.cha
    ['more', 'cookie', '.']
    >>> remove_annotations("you <find it xxx> [//] find it .").split()              # bates_story28_amyst.cha
    ['you', '<find', 'it', 'xxx>', 'find', 'it', '.']
    >>> remove_annotations("<what's this one> [>] ?").split()                       # bates_free20_amy20.cha
    ["<what's", 'this', 'one>', '?']
    """
    return _ANNOTATION.sub(" ", text)


def clean_chat(main_tier: str) -> tuple[str, str | None]:
    """Clean the text of one CHAT main tier: (`words terminator`, None), or ("", reason) when nothing is left.

    Retraced words are kept with their correction, fillers dropped (brown_eve01.cha):
    >>> clean_chat("juice [/] &-um juice [/] juice .")
    ('juice juice juice .', None)

    Pauses go, tag markers `‡ „` become commas (brown_eve01.cha):
    >>> clean_chat("no (.) ‡ no more (.) „ Eve .")
    ('no , no more , Eve .', None)

    Omitted words `0v` go; trail-off `+...` ends like `.`; linkers `+"` go:
    >>> clean_chat("you 0v more cookies ?"), clean_chat("I don't know +..."), clean_chat('+" so happy it .')
    (('you more cookies ?', None), ("I don't know .", None), ('so happy it .', None))

    Time-alignment bullets go (bernstein_children_alice1.cha):
    >>> clean_chat("build (th)em up . \\x1528461_29938\\x15")
    ('build them up .', None)

    Empty utterances are reported with the reason (bates_free20_amy20.cha, brown_eve01.cha):
    >>> clean_chat("yyy ."), clean_chat("&um ."), clean_chat("0 [=! laughs louder] .")
    (('', 'untranscribed'), ('', 'filler_or_fragment'), ('', 'nonverbal'))
    """
    text = _BULLET.sub(" ", main_tier)
    text = remove_annotations(expand_repetitions(apply_replacements(text))).translate(_TAG_MARKERS)
    words: list[str] = []
    terminator = "."  # CHAT requires one; a tier without it (CA transcripts) ends like a statement
    flags: set[str] = set()
    for token in text.split():
        if _TERMINATOR_OR_LINKER.fullmatch(token):
            terminator = _terminator_mark(token) or terminator
        elif token == ",":
            words.append(",")
        elif _PAUSE.fullmatch(token):
            continue
        elif token[0] == "&":
            if not token.startswith("&="):  # &=laughs is an event, the rest are fillers, fragments, nonwords
                flags.add("filler_or_fragment")
        else:
            cleaned = clean_word(token)
            if not cleaned and token in _UNTRANSCRIBED:
                flags.add("untranscribed")
            words.extend(cleaned)
    return _finish(words, terminator, flags)


# ----------------------------------------------------------------------------------------------------------------
# Cleaning TalkBank XML utterances: the same rules applied to the XML elements that encode the CHAT codes

# Elements inside <u> that hold no spoken word: events <e>/<happening>, pauses, overlap and CA marks, linkers,
# quotation marks, media links, postcodes, dependent tiers <a>, %mor, free codes, separators <s> (CA intonation).
_XML_SKIPPED = frozenset({"e", "happening", "pause", "overlap", "overlap-point", "linker", "quotation", "media",
                          "internal-media", "postcode", "a", "mor", "freecode", "s", "ca-element", "ca-delimiter",
                          "underline", "k", "ga", "r", "error", "actual", "model", "langs", "p", "long-feature",
                          "nonvocal", "t"})
_XML_TERMINATORS = {"p": ".", "q": "?", "e": "!"}


def _xml_terminator(kind: str) -> str:
    """`<t type>` -> mark: p/q/e, and the CHAT special terminators by whether they ask ("trail off question")."""
    return _XML_TERMINATORS.get(kind) or ("?" if "question" in kind else ".")


def _xml_word_text(word: ET.Element) -> str:
    """The text of a <w>: shortenings filled in, compound marks <wk type="cmp"/> -> space; %mor, <langs>, drawl
    <p/> and CA marks inside the word are skipped (their tails, the rest of the word, are kept)."""
    parts = [word.text or ""]
    for child in word:
        tag = child.tag[len(TALKBANK):]
        if tag == "shortening":
            parts.append(child.text or "")
        elif tag == "wk":
            parts.append(" " if child.get("type") == "cmp" else "")
        parts.append(child.tail or "")
    return "".join(parts)


def _xml_words(element: ET.Element, flags: set[str], unknown: set[str]) -> Iterator[str]:
    for child in element:
        tag = child.tag[len(TALKBANK):]
        if tag == "w":
            yield from _xml_word(child, flags, unknown)
        elif tag in ("g", "pg"):  # groups (retracings included: their words are kept), phonological groups
            words = list(_xml_words(child, flags, unknown))
            times = child.find(TALKBANK + "r")  # [x 3]
            times = times.get("times", "1") if times is not None else "1"
            yield from words * (min(int(times), MAX_REPETITIONS) if times.isdigit() else 1)
        elif tag == "tagMarker":  # comma, tag „ and vocative ‡
            yield ","
        elif tag not in _XML_SKIPPED:
            unknown.add(tag)


def _xml_word(word: ET.Element, flags: set[str], unknown: set[str]) -> Iterator[str]:
    if word.get("untranscribed"):
        flags.add("untranscribed")
        return
    kind = word.get("type")
    if kind in ("fragment", "filler", "nonword"):
        flags.add("filler_or_fragment")
        return
    if kind == "omission":
        return
    replacement = word.find(TALKBANK + "replacement")
    if replacement is not None:
        yield from _xml_words(replacement, flags, unknown)
        return
    text = _xml_word_text(word)
    words = clean_word(text)
    if not words and text.strip() in _UNTRANSCRIBED:
        flags.add("untranscribed")
    yield from words


def clean_xml_utterance(utterance: ET.Element, unknown: set[str] | None = None) -> tuple[str, str | None]:
    """Clean one TalkBank `<u>`: (`words terminator`, None), or ("", reason) when no word is left.

    The XML form of the CHAT codes: `<g>` with `<k type="retracing"/>` ([/], words kept), `<replacement>` ([: x]),
    `<shortening>` ((th)at), `<wk type="cmp"/>` (+), `<w type="fragment|filler|omission">`, `untranscribed=`,
    `<tagMarker>` (, ‡ „), `<t type>`. From xml/Eng-UK/Manchester/nic/nic03b.xml.gz (CHAT `no [/] no way ?`):
    >>> u = ET.fromstring('<u xmlns="http://www.talkbank.org/ns/talkbank" who="MOT"><g><w>no</w>'
    ...     '<k type="retracing"/></g><w>no</w><w>way</w><t type="q"></t></u>')
    >>> clean_xml_utterance(u)
    ('no no way ?', None)

    From xml/Eng-NA/Demetras1/tre12.xml.gz (CHAT `pus(h) en [: them] .`):
    >>> u = ET.fromstring('<u xmlns="http://www.talkbank.org/ns/talkbank" who="CHI"><w>pus<shortening>h'
    ...     '</shortening></w><w>en<replacement><w>them</w></replacement></w><t type="p"></t></u>')
    >>> clean_xml_utterance(u)
    ('push them .', None)
    """
    flags: set[str] = set()
    words = list(_xml_words(utterance, flags, set() if unknown is None else unknown))
    terminator = utterance.find(TALKBANK + "t")
    return _finish(words, "." if terminator is None else _xml_terminator(terminator.get("type", "p")), flags)


# ----------------------------------------------------------------------------------------------------------------
# Readers

def chat_age(years: int, months: int, days: int | None) -> str:
    return f"{years};{months:02d}" + ("" if days is None else f".{days:02d}")


def _xml_age(iso: str | None) -> str | None:
    """`P2Y1M15D` -> `2;01.15`, `P1Y8M` -> `1;08`."""
    match = re.fullmatch(r"P(\d+)Y(?:(\d+)M)?(?:(\d+)D)?", iso or "")
    if not match:
        return None
    return chat_age(int(match[1]), int(match[2] or 0), None if match[3] is None else int(match[3]))


def _chat_age(text: str) -> str | None:
    """`1;06.00` -> `1;06.00`, `2;1.` -> `2;01`."""
    match = re.fullmatch(r"(\d+);(\d+)?(?:\.(\d+)?)?", text.strip())
    if not match:
        return None
    return chat_age(int(match[1]), int(match[2] or 0), None if match[3] is None else int(match[3]))


def _with_target_child(participants: dict[str, Participant]) -> dict[str, Participant]:
    """Where no one is `Target_Child`, the participant `CHI` (declared as `Child`) is the target child."""
    if any(p.role == CHILD_ROLE for p in participants.values()) or "CHI" not in participants:
        return participants
    chi = participants["CHI"]
    return {**participants, "CHI": Participant(chi.id, CHILD_ROLE, chi.age)}


def read_xml(path: Path, name: str | None = None) -> Transcript:
    """Read a TalkBank XML transcript (`.xml` or `.xml.gz`); raises CorpusError for a file that cannot be read."""
    name = name or path.name
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise CorpusError(f"{path}:{error.position[0]}: broken XML ({error})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise CorpusError(f"{path}: cannot read ({error})") from None
    if root.tag != TALKBANK + "CHAT":
        raise CorpusError(f"{path}:1: not a TalkBank XML transcript (root element {root.tag})")
    participants = {}
    for element in root.iter(TALKBANK + "participant"):
        pid = element.get("id", "")
        participants[pid] = Participant(pid, element.get("role", ""), _xml_age(element.get("age")))
    transcript = Transcript(root.get("Corpus", ""), name, _with_target_child(participants), [])
    unknown: set[str] = set()
    for index, element in enumerate(root.iter(TALKBANK + "u")):
        speaker = element.get("who", "")
        text, reason = clean_xml_utterance(element, unknown)
        _add_utterance(transcript, speaker, text, reason, index, f"{path}:{element.get('uID', index)}")
    for tag in sorted(unknown):
        transcript.warnings.append(f"{path}: unknown element <{tag}> inside utterances (skipped)")
    return transcript


def _add_utterance(transcript: Transcript, speaker: str, text: str, reason: str | None, index: int,
                   where: str) -> None:
    if speaker not in transcript.participants:
        transcript.warnings.append(f"{where}: speaker {speaker!r} is not a declared participant (role: other)")
        transcript.participants[speaker] = Participant(speaker, "")
    if reason:
        transcript.dropped[reason] += 1
        return
    terminator = text[-1]
    transcript.utterances.append(Utterance(speaker, transcript.participants[speaker].role, text, terminator, index))


_MAIN_TIER = re.compile(r"\*([^:\s]+):\s?(.*)", re.S)


def _chat_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line): tab-indented continuation lines are joined to the line they continue."""
    number, current = 0, None
    for i, line in enumerate(text.splitlines(), start=1):
        if line.startswith("\t") and current is not None:
            current += " " + line.strip()
            continue
        if current is not None:
            yield number, current
        number, current = i, line
    if current is not None:
        yield number, current


def read_chat(path: Path, name: str | None = None) -> Transcript:
    """Read a CHAT (`.cha`) transcript: @Participants and @ID headers, main tiers `*SPK:`; dependent tiers `%...`
    and other headers are skipped. A line that is none of these is warned about (file:line) and skipped."""
    name = name or path.name
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error})") from None
    warnings = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        text = raw.decode("utf-8", errors="replace")
        warnings.append(f"{path}: not UTF-8 ({error.reason} at byte {error.start}); bad bytes replaced")
    corpus, roles, ages = "", {}, {}
    tiers = []
    dropped = Counter()
    for number, line in _chat_lines(text):
        if line.startswith("@Participants:"):
            for entry in line.split(":", 1)[1].split(","):
                fields = entry.split()
                if len(fields) >= 2:
                    roles.setdefault(fields[0], fields[-1])
        elif line.startswith("@ID:"):
            fields = line.split(":", 1)[1].strip().split("|")
            if len(fields) >= 8:
                corpus = corpus or fields[1]
                roles[fields[2]] = fields[7] or roles.get(fields[2], "")
                ages[fields[2]] = _chat_age(fields[3])
        elif line.startswith("*"):
            match = _MAIN_TIER.fullmatch(line)
            if match:
                tiers.append((number, match[1], match[2]))
            else:
                warnings.append(f"{path}:{number}: main tier without `*SPEAKER:` (skipped)")
                dropped["malformed_line"] += 1
        elif line.strip() and not line.startswith(("@", "%")):
            warnings.append(f"{path}:{number}: not a CHAT header, main tier or dependent tier (skipped): "
                            f"{line[:40]!r}")
            dropped["malformed_line"] += 1
    participants = _with_target_child({pid: Participant(pid, role, ages.get(pid)) for pid, role in roles.items()})
    transcript = Transcript(corpus, name, participants, [], dropped, warnings)
    for index, (number, speaker, tier) in enumerate(tiers):
        text, reason = clean_chat(tier)
        _add_utterance(transcript, speaker, text, reason, index, f"{path}:{number}")
    return transcript


TRANSCRIPT_SUFFIXES = (".xml.gz", ".xml", ".cha")


def transcript_id(path: Path, root: Path) -> str:
    """The transcript's id: its path below the input root without the extension (`Eng-NA/Brown/Eve/eve01`)."""
    relative = path.relative_to(root) if path != root else Path(path.name)
    text = relative.as_posix()
    for suffix in TRANSCRIPT_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def read_transcript(path: Path, name: str | None = None) -> Transcript:
    """Read one transcript, XML or CHAT by its extension; raises CorpusError if the file cannot be read."""
    if path.name.endswith((".xml", ".xml.gz")):
        return read_xml(path, name)
    if path.name.endswith(".cha"):
        return read_chat(path, name)
    raise CorpusError(f"{path}: not a transcript (expected {', '.join(TRANSCRIPT_SUFFIXES)})")


def find_transcripts(inputs: Iterable[Path]) -> list[tuple[Path, str]]:
    """(file, transcript id) for every transcript under the inputs (files or folders), sorted by id."""
    found: dict[str, Path] = {}
    for root in map(Path, inputs):
        if not root.exists():
            raise CorpusError(f"--childes {root}: no such file or folder")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        base = root.parent if root.is_file() else root
        for path in files:
            if path.name.endswith(TRANSCRIPT_SUFFIXES):
                tid = transcript_id(path, base)
                if tid in found:
                    raise CorpusError(f"{path}: transcript id {tid!r} is also {found[tid]} (give only one of them)")
                found[tid] = path
    if not found:
        names = " ".join(str(p) for p in inputs)
        raise CorpusError(f"--childes {names}: no transcripts found ({', '.join(TRANSCRIPT_SUFFIXES)})")
    return [(path, tid) for tid, path in sorted(found.items())]


def _read_for_build(job: tuple[Path, str]) -> tuple[str, Transcript | None, str | None]:
    """Worker: (id, transcript or None, error line)."""
    path, tid = job
    try:
        return tid, read_transcript(path, tid), None
    except CorpusError as error:
        return tid, None, str(error)


# ----------------------------------------------------------------------------------------------------------------
# Dialogue data: splits, triplets, prompts, natural pairs

def split_transcripts(ids: Iterable[str], seed: int = 0,
                      fractions: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Whole transcripts -> {"train", "val", "dpo", "eval"}: a seeded shuffle of the sorted ids, each held-out split
    gets round(fraction * n) transcripts, train the rest. At least 1 in val and 2 in dpo and eval (a pair's random
    reply comes from another transcript of its split). Checked disjoint."""
    fractions = {**DEFAULT_FRACTIONS, **(fractions or {})}
    ids = sorted(ids)
    held_out = {name: max(2 if name in PAIR_SPLITS else 1, round(fractions[name] * len(ids))) for name in SPLITS[1:]}
    if len(ids) < 1 + sum(held_out.values()):
        raise CorpusError(f"{len(ids)} transcripts cannot fill 4 disjoint splits (need at least "
                          f"{1 + sum(held_out.values())})")
    random.Random(seed).shuffle(ids)
    splits, start = {}, 0
    for name in SPLITS[1:]:
        splits[name] = sorted(ids[start:start + held_out[name]])
        start += held_out[name]
    splits = {"train": sorted(ids[start:]), **splits}
    check_disjoint(splits)
    return splits


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """Raise CorpusError if a transcript is in two splits."""
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for tid in ids:
            if tid in seen:
                raise CorpusError(f"transcript {tid} is in split {seen[tid]} and in split {name}")
            seen[tid] = name


def _adjacent(*utterances: Utterance) -> bool:
    return all(b.index == a.index + 1 for a, b in zip(utterances, utterances[1:]))


def triplets(transcript: Transcript, all_windows: bool = False) -> Iterator[tuple[Utterance, Utterance, Utterance]]:
    """Windows of three adjacent utterances: caregiver, target child, caregiver (or every window, all_windows).

    Windows overlap: in MOT CHI MOT CHI MOT the middle MOT closes one triplet and opens the next.
    """
    u = transcript.utterances
    for window in zip(u, u[1:], u[2:]):
        if not _adjacent(*window):
            continue
        first, child, last = window
        if all_windows or (first.role in CAREGIVER_ROLES and child.role == CHILD_ROLE and last.role in CAREGIVER_ROLES):
            yield window


def _mother_child_turns(transcript: Transcript) -> Iterator[tuple[Utterance, Utterance]]:
    """(mother utterance, the child's reply right after it), both at least MIN_PAIR_TOKENS long."""
    u = transcript.utterances
    for prompt, reply in zip(u, u[1:]):
        if (prompt.role == "Mother" and reply.role == CHILD_ROLE and _adjacent(prompt, reply)
                and len(prompt.text.split()) >= MIN_PAIR_TOKENS and len(reply.text.split()) >= MIN_PAIR_TOKENS):
            yield prompt, reply


def _lexical(text: str) -> set[str]:
    return {word.lower() for word in text.split() if any(ch.isalnum() for ch in word)}


def natural_pairs(transcripts: list[Transcript], length, overlap: bool, seed: int) -> tuple[list[dict], int]:
    """The paper's natural DPO pairs from one split: (mother prompt, the child's actual reply = chosen, a random
    child reply from ANOTHER transcript of the split with the same length = rejected).

    length(text) -> int is the matched length: whitespace tokens (`words`, terminator included, as the paper's
    len_pairs file) or tokenizer tokens (`tokens`). overlap=False keeps only pairs whose chosen reply shares no word
    with the prompt (so a model cannot win by preferring repetition): the paper's `*_no_overlap_*` files (their
    chosen replies overlap the prompt in 0.07 % of rows, case differences; their rejected in 14 %).
    Returns (pairs, number of prompts with no reply of matching length elsewhere).
    """
    rng = random.Random(seed)
    pool: dict[int, list[tuple[str, str]]] = {}
    for t in transcripts:
        for reply in t.utterances:
            if reply.role == CHILD_ROLE and len(reply.text.split()) >= MIN_PAIR_TOKENS:
                pool.setdefault(length(reply.text), []).append((reply.text, t.file))
    pairs, unmatched = [], 0
    for t in transcripts:
        for prompt, reply in _mother_child_turns(t):
            if not overlap and _lexical(prompt.text) & _lexical(reply.text):
                continue
            candidates = pool[length(reply.text)]  # never empty: the reply itself is in the pool
            for _ in range(50):  # random draws; a draw from the same transcript or with the same text is redrawn
                text, source = candidates[rng.randrange(len(candidates))]
                if source != t.file and text != reply.text:
                    pairs.append({"prompt": prompt.line, "chosen": reply.line,
                                  "rejected": f"{speaker_tag(CHILD_ROLE)} {text}", "transcript": t.file})
                    break
            else:
                unmatched += 1
    return pairs, unmatched


def read_pairs(path: Path) -> list[Pair]:
    """Preference pairs with speaker tags, from our JSONL (`pairs/*.jsonl`) or the paper's files:
    `huggingface_dpo_format*.json` (tags included), `synthetic_dpo_format.json` (no tags: `*MOT: `/`*CHI: ` added),
    `len_pairs_no_overlap_1.csv` / `tok_pairs_no_overlap_1.csv` (columns pospair, negpair = `*MOT: p<TAB>*CHI: r`)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such pairs file")

    def pair(prompt: str, chosen: str, rejected: str) -> Pair:
        prompt, chosen, rejected = prompt.strip(), chosen.strip(), rejected.strip()
        if not prompt.startswith("*"):
            prompt, chosen, rejected = (f"{ROLE_TAGS['Mother']} {prompt}", f"{ROLE_TAGS['Target_Child']} {chosen}",
                                        f"{ROLE_TAGS['Target_Child']} {rejected}")
        return Pair(prompt, chosen, rejected)

    pairs = []
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                for number, row in enumerate(csv.DictReader(f), start=2):
                    prompt, chosen = row["pospair"].split("\t", 1)
                    negative_prompt, rejected = row["negpair"].split("\t", 1)
                    if prompt.strip() != negative_prompt.strip():
                        raise CorpusError(f"{path}:{number}: pospair and negpair have different prompts")
                    pairs.append(pair(prompt, chosen, rejected))
        elif path.suffix == ".json":
            for record in json.loads(path.read_text(encoding="utf-8")):
                pairs.append(pair(record["prompt"], record["chosen"], record["rejected"]))
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        record = json.loads(line)
                        pairs.append(pair(record["prompt"], record["chosen"], record["rejected"]))
        else:
            raise CorpusError(f"{path}: unknown pairs format (expected .jsonl, .json or .csv)")
    except (KeyError, ValueError, TypeError) as error:
        raise CorpusError(f"{path}: not a pairs file ({type(error).__name__}: {error})") from None
    return pairs


def read_prompts(path: Path) -> list[str]:
    """Caregiver prompts, one utterance per line without speaker tag (DIR/prompts.txt)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such prompts file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# The build

def _build_key(files: list[tuple[Path, str]], options: dict) -> str:
    """Hash of everything the output depends on: input files (path, size, mtime), options, and this code."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path, tid in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{tid}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for module in (Path(__file__), Path(__file__).with_name("tokenizer.py")):
        digest.update(module.read_bytes())
    return digest.hexdigest()


OUTPUT_FILES = ("train.txt", "val.txt", "dpo.txt", "eval.txt", "prompts.txt", "splits.json", "tokenizer.model",
                "stats.json")


def _cached_stats(out_dir: Path, key: str) -> dict | None:
    try:
        stats = json.loads((out_dir / "stats.json").read_text())
    except (OSError, ValueError):
        return None
    if stats.get("build_key") != key or not all((out_dir / name).exists() for name in OUTPUT_FILES):
        return None
    return stats


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_documents(path: Path) -> list[str]:
    """The triplets ("documents") of a split file: blocks of lines separated by a blank line."""
    return [block for block in path.read_text(encoding="utf-8").split("\n\n") if block.strip()]


def build_corpus(inputs: list[Path] | None = None, out_dir: Path = Path("runs/data"), vocab_size: int = 16000,
                 seed: int = 0, all_windows: bool = False, fractions: dict[str, float] | None = None,
                 workers: int = 2, force: bool = False, progress: bool = True,
                 max_tokenizer_sentences: int = 1_000_000) -> dict:
    """Build llamalogue's data directory from CHILDES transcripts; returns the statistics (also DIR/stats.json).

    Rebuilds only when the inputs, the options or this code changed (or force). Raises CorpusError for bad inputs or
    an empty result; unreadable files and lines are warned about (DIR/warnings.txt), skipped and counted.
    """
    start = time.time()
    if vocab_size < MIN_VOCAB_SIZE:
        raise CorpusError(f"--vocab-size {vocab_size}: too small (the 256 byte pieces, the special ids, newline and "
                          f"the {len(SPEAKER_TAGS)} speaker tags need {MIN_VOCAB_SIZE})")
    inputs = [Path(p) for p in (inputs or [DEFAULT_CHILDES])]
    out_dir = Path(out_dir)
    files = find_transcripts(inputs)
    options = {"vocab_size": vocab_size, "seed": seed, "all_windows": all_windows,
               "fractions": {**DEFAULT_FRACTIONS, **(fractions or {})},
               "max_tokenizer_sentences": max_tokenizer_sentences}
    key = _build_key(files, options)
    if not force and (stats := _cached_stats(out_dir, key)):
        if progress:
            print(f"{out_dir}: up to date ({stats['transcripts']} transcripts, built from the same inputs/options)")
        return stats
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").unlink(missing_ok=True)  # a half-written directory is never taken as built
    splits = split_transcripts([tid for _, tid in files], seed, options["fractions"])
    split_of = {tid: name for name, ids in splits.items() for tid in ids}

    dropped: Counter = Counter()
    warnings: list[str] = []
    words_by_role: Counter = Counter()
    utterances_by_role: Counter = Counter()
    read_ids: dict[str, list[str]] = {name: [] for name in SPLITS}
    triplet_counts = Counter({name: 0 for name in SPLITS})
    held_out: dict[str, list[Transcript]] = {name: [] for name in PAIR_SPLITS}
    outputs = {name: (out_dir / f"{name}.txt").open("w", encoding="utf-8") for name in SPLITS}
    workers = max(1, min(workers, len(files)))
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_read_for_build, files, chunksize=4) if pool else map(_read_for_build, files)
        bar = tqdm(results, total=len(files), unit="file", desc="reading transcripts", disable=not progress,
                   file=sys.stdout)
        for tid, transcript, error in bar:
            if transcript is None:
                warnings.append(error)
                dropped["unreadable_file"] += 1
                continue
            warnings.extend(transcript.warnings)
            dropped.update(transcript.dropped)
            split = split_of[tid]
            read_ids[split].append(tid)
            for u in transcript.utterances:
                utterances_by_role[u.role or "undeclared"] += 1
                words_by_role[u.role or "undeclared"] += sum(w != "," for w in u.text.split()) - 1
            out = outputs[split]
            for window in triplets(transcript, all_windows):
                out.write("\n".join(u.line for u in window) + "\n\n")
                triplet_counts[split] += 1
            if split in held_out:
                held_out[split].append(transcript)
    finally:
        if pool:
            pool.terminate()
        for f in outputs.values():
            f.close()
    seconds_reading = time.time() - start
    if not triplet_counts["train"]:
        raise CorpusError(f"--childes {' '.join(map(str, inputs))}: no caregiver-child-caregiver triplet in the "
                          f"train split ({sum(map(len, read_ids.values()))} transcripts read)")
    for name in SPLITS:
        if not read_ids[name]:
            raise CorpusError(f"split {name} is empty: none of its transcripts could be read")

    if progress:
        print(f"training the tokenizer (SentencePiece, vocab {vocab_size}) on train.txt ...", flush=True)
    try:
        tokenizer = Tokenizer.train([out_dir / "train.txt"], out_dir / "tokenizer", vocab_size, SPEAKER_TAGS,
                                    max_sentences=max_tokenizer_sentences, seed=seed)
    except RuntimeError as error:  # SentencePiece's own message, e.g. a vocabulary too large for a tiny text
        raise CorpusError(f"{out_dir / 'train.txt'}: tokenizer training failed: {error}") from None
    seconds_tokenizer = time.time() - start - seconds_reading
    tokens = {}
    for name in SPLITS:
        documents = read_documents(out_dir / f"{name}.txt")
        tokens[name] = sum(len(ids) + 2 for ids in tokenizer.encode_batch(documents))  # + BOS and EOS

    # PPO/teacher prompts: the dpo split's mother utterances of >= 4 tokens, as the paper; repeated ones kept once
    prompts = list(dict.fromkeys(u.text for t in held_out["dpo"] for u in t.utterances
                                 if u.role == "Mother" and len(u.text.split()) >= MIN_PAIR_TOKENS))
    (out_dir / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    pair_counts, unmatched = {}, Counter()
    (out_dir / "pairs").mkdir(exist_ok=True)
    lengths = {"words": lambda text: len(text.split()), "tokens": functools.cache(lambda t: len(tokenizer.encode(t)))}
    for split in PAIR_SPLITS:
        for match, length in lengths.items():
            for overlap in (True, False):
                name = f"{split}_{match}_{'overlap' if overlap else 'nooverlap'}"
                pairs, unmatched[name] = natural_pairs(held_out[split], length, overlap, seed)
                with (out_dir / "pairs" / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                    f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
                pair_counts[name] = len(pairs)

    _write_json(out_dir / "splits.json", read_ids)
    (out_dir / "warnings.txt").write_text("".join(w + "\n" for w in warnings), encoding="utf-8")
    stats = {
        "transcripts": sum(map(len, read_ids.values())),
        "files": len(files),
        "utterances": sum(utterances_by_role.values()),
        "utterances_by_role": dict(utterances_by_role.most_common()),
        "words": sum(words_by_role.values()),
        "words_by_role": dict(words_by_role.most_common()),
        "transcripts_by_split": {name: len(ids) for name, ids in read_ids.items()},
        "triplets": dict(triplet_counts),
        "tokens": tokens,
        "prompts": len(prompts),
        "pairs": pair_counts,
        "pairs_without_match": {k: v for k, v in unmatched.items() if v},
        "dropped": dict(dropped.most_common()),
        "warnings": len(warnings),
        "vocab_size": tokenizer.vocab_size,
        "seconds_reading": round(seconds_reading, 1),
        "seconds_tokenizer": round(seconds_tokenizer, 1),
        "seconds": round(time.time() - start, 1),
        "inputs": [str(p) for p in inputs],
        "options": options,
        "build_key": key,
    }
    _write_json(out_dir / "stats.json", stats)
    if progress:
        _print_summary(stats, warnings, out_dir)
    return stats


def _print_summary(stats: dict, warnings: list[str], out_dir: Path) -> None:
    for line in warnings[:10]:
        print(f"warning: {line}")
    if len(warnings) > 10:
        print(f"... {len(warnings) - 10} more warnings in {out_dir / 'warnings.txt'}")
    words = stats["words_by_role"]
    caregiver_words = sum(n for role, n in words.items() if role in CAREGIVER_ROLES)
    print(f"{stats['transcripts']} transcripts ({stats['files']} files), {stats['utterances']:,} utterances, "
          f"{stats['words']:,} words (child {words.get(CHILD_ROLE, 0):,}, caregivers {caregiver_words:,})")
    print("triplets " + ", ".join(f"{k} {v:,}" for k, v in stats["triplets"].items())
          + " | tokens " + ", ".join(f"{k} {v:,}" for k, v in stats["tokens"].items()))
    print(f"{stats['prompts']:,} prompts; pairs " + ", ".join(f"{k} {v:,}" for k, v in stats["pairs"].items()))
    print("dropped " + ", ".join(f"{k} {v:,}" for k, v in stats["dropped"].items()))
    if stats["vocab_size"] < stats["options"]["vocab_size"]:
        print(f"tokenizer: {stats['vocab_size']:,} pieces (asked for {stats['options']['vocab_size']:,}: the train "
              f"text is too small for more)")
    print(f"wrote {out_dir} in {stats['seconds']:.1f} s (reading {stats['seconds_reading']:.1f} s, tokenizer "
          f"{stats['seconds_tokenizer']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamalogue.corpus", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--childes", nargs="+", type=Path, metavar="PATH",
                        help="transcript files or folders (.xml, .xml.gz, .cha), searched recursively "
                             "(default: the embedded sample data/childes)")
    parser.add_argument("--out", type=Path, default=Path("runs/data"), help="output data directory")
    parser.add_argument("--vocab-size", type=int, default=16000, help="SentencePiece vocabulary size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and the random pair replies")
    parser.add_argument("--all-windows", action="store_true",
                        help="every window of three adjacent utterances, not only caregiver-child-caregiver")
    for name, value in DEFAULT_FRACTIONS.items():
        parser.add_argument(f"--{name}-fraction", type=float, default=value,
                            help=f"share of transcripts in split {name} (train gets the rest)")
    parser.add_argument("--workers", type=int, default=2, help="reader processes")
    parser.add_argument("--max-tokenizer-sentences", type=int, default=1_000_000,
                        help="lines of train.txt sampled to train the tokenizer")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR is up to date")
    args = parser.parse_args(argv)
    fractions = {name: getattr(args, f"{name}_fraction") for name in DEFAULT_FRACTIONS}
    try:
        if not all(0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
            raise CorpusError(f"split fractions {fractions}: each must be in [0, 1) and together < 1")
        build_corpus(args.childes, args.out, args.vocab_size, args.seed, args.all_windows, fractions, args.workers,
                     args.force, max_tokenizer_sentences=args.max_tokenizer_sentences)
    except CorpusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
