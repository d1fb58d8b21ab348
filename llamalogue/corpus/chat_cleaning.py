"""Cleaning CHILDES utterances: the rules shared by the CHAT reader (`clean_chat`, main-tier text) and the TalkBank
XML reader (`clean_xml_utterance`, the elements that encode the same CHAT codes); llamalogue.corpus.transcripts reads the
files and calls them.

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
"""
from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from typing import Iterator

TALKBANK = "{http://www.talkbank.org/ns/talkbank}"

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
