"""CHILDES transcripts: find them, read TalkBank XML (`.xml`, `.xml.gz`) and CHAT (`.cha`) files into `Transcript`s
whose utterances are cleaned by llamalogue.corpus.chat_cleaning, and name each file that cannot be read (`CorpusError`).

Speakers: the tag written for an utterance comes from the speaker's ROLE (`ROLE_TAGS`), so the target child is always
`*CHI:` and mothers are always `*MOT:` whatever id the transcript used (`MOM`, `ATT`; children `MAR`, `Julia`...).
Where a transcript declares no `Target_Child` (Lara, Brent, Bloom73, Wooten, some Bates files give the child `CHI` the
role `Child`), the participant `CHI` is taken as the target child.
Caregivers (`CAREGIVER_ROLES`) are the adults who look after or play with the child in the recording: Mother, Father,
Grandmother, Grandfather, Aunt, Uncle, Babysitter, Teacher, Adult, and Investigator (the researcher who plays with the
child, e.g. Colin and Richard with Eve in Brown). Siblings, visitors, camera operators, toys are not caregivers.

Files: a `.cha` file is read as UTF-8 (CHAT's own encoding, declared by its `@UTF8` header), or as UTF-16 when it
starts with a UTF-16 byte-order mark; a file in any other encoding (cp1252, Latin-1) is refused with its first bad
byte named, as is a file with no utterance at all, so that no mojibake reaches the corpus and no empty file counts
as a transcript.
"""
from __future__ import annotations

import codecs
import gzip
import re
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from llamalogue.corpus.chat_cleaning import TALKBANK, clean_chat, clean_xml_utterance

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
# The caregivers a triplet may open and close with, by name (`--caregivers`): ours, every caregiver role; the
# paper's, the three speaker codes its triplet script keeps (MOT, FAT, INV).
CAREGIVER_SETS = {"all": CAREGIVER_ROLES, "paper": frozenset({"Mother", "Father", "Investigator"})}


def caregiver_roles(spec: str) -> frozenset[str]:
    """--caregivers: a name of CAREGIVER_SETS, or speaker codes ("MOT,FAT,GRM") -> the CHAT roles they stand for."""
    if spec in CAREGIVER_SETS:
        return CAREGIVER_SETS[spec]
    role_of_code = {tag.strip("*:"): role for role, tag in ROLE_TAGS.items() if role != CHILD_ROLE}
    codes = [code.strip().upper() for code in spec.split(",") if code.strip()]
    unknown = [code for code in codes if code not in role_of_code]
    if not codes or unknown:
        raise CorpusError(f"--caregivers {spec!r}: {', '.join(unknown) or 'no code'} is not an adult speaker code; "
                          f"give {' or '.join(CAREGIVER_SETS)}, or codes such as MOT,FAT,INV")
    return frozenset(role_of_code[code] for code in codes)


class CorpusError(ValueError):
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


def speaker_tag(role: str) -> str:
    return ROLE_TAGS.get(role, OTHER_TAG)


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
    except (LookupError, ValueError) as error:  # e.g. an encoding the XML declaration names that Python lacks
        raise CorpusError(f"{path}:1: unreadable XML ({error})") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as error:  # zlib.error: corrupted compressed data
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


def decode_chat(path: Path, raw: bytes) -> str:
    """The text of a CHAT file: UTF-8 (a UTF-8 byte-order mark dropped), or UTF-16 after its byte-order mark; any
    other encoding is a CorpusError naming the first byte that is not UTF-8."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as error:
            raise CorpusError(f"{path}: broken UTF-16 ({error.reason} at byte {error.start})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = raw[error.start : error.start + 1]
        raise CorpusError(f"{path}: not UTF-8 ({error.reason} at byte {error.start}: {byte!r}); CHAT files are UTF-8, "
                          f"convert it with `iconv -f cp1252 -t utf-8`") from None


def read_chat(path: Path, name: str | None = None) -> Transcript:
    """Read a CHAT (`.cha`) transcript: @Participants and @ID headers, main tiers `*SPK:`; dependent tiers `%...`
    and other headers are skipped. A line that is none of these is warned about (file:line) and skipped."""
    name = name or path.name
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CorpusError(f"{path}: cannot read ({error})") from None
    text = decode_chat(path, raw)
    warnings = []
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
    """Read one transcript, XML or CHAT by its extension; raises CorpusError if the file cannot be read or holds no
    utterance at all (kept or dropped): such a file is no transcript, whatever its name."""
    if path.name.endswith((".xml", ".xml.gz")):
        transcript = read_xml(path, name)
    elif path.name.endswith(".cha"):
        transcript = read_chat(path, name)
    else:
        raise CorpusError(f"{path}: not a transcript (expected {', '.join(TRANSCRIPT_SUFFIXES)})")
    if not transcript.utterances and not set(transcript.dropped) - {"malformed_line"}:
        raise CorpusError(f"{path}: no utterances (no main tier *SPEAKER: or <u> element)")
    return transcript


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
