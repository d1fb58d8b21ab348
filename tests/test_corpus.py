"""The CHILDES pipeline on real transcripts: cleaning rules, XML/CHAT agreement, triplets, splits, pairs, CLI."""
import doctest
import gzip
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import EMBEDDED_CHILDES, REPO, SMALL_BUILD_OPTIONS, small_childes_files
from llamalogue.corpus import build as corpus, chat_cleaning, transcripts
from llamalogue.corpus.chat_cleaning import clean_chat, clean_xml_utterance
from llamalogue.corpus.build import build_corpus, check_disjoint, split_transcripts, triplets
from llamalogue.corpus.dialogue_files import Pair, read_pairs, read_prompts
from llamalogue.corpus.transcripts import (CAREGIVER_ROLES, ROLE_TAGS, CorpusError, caregiver_roles, read_chat,
                                           read_transcript, read_xml)
from llamalogue.tokenizer import Tokenizer

EMBEDDED_CHA = REPO / "data" / "cha"
SHARED = Path(os.environ.get("LLAMALOGUE_SHARED", REPO.parent / "shared"))
PAPER_DPO = SHARED / "data" / "paper" / "dpo"
NS = "{http://www.talkbank.org/ns/talkbank}"


def test_docstring_examples_hold():
    """Every cleaning rule's docstring example (real CHILDES lines) is checked here."""
    result = doctest.testmod(chat_cleaning)
    assert result.attempted >= 15 and result.failed == 0


# One real example per cleaning rule: (CHAT main tier as in the file, cleaned text, file it comes from)
CHAT_RULES = {
    "retracing [/] keeps both": ("<dolly xxx> [/] <dolly xxx> [/] dolly xxx .", "dolly dolly dolly .",
                                 "brown_eve01.cha"),
    "retracing [//] keeps both": ("you <find it xxx> [//] find it .", "you find it find it .", "brown_eve01.cha"),
    "retracing [///] keeps both": ("do you know what &+th oh [///] (.) gotta push harder .",
                                   "do you know what oh gotta push harder .", "Clark/shem05.xml.gz u402 as CHAT"),
    "replacement keeps the target": ("&um dey [: they] have animal .", "they have animal .", "bates_snack28_amy.cha"),
    "repetition [x N] written out": ("wait [x 3] .", "wait wait wait .", "Brown/Eve/eve01.xml.gz u1303 as CHAT"),
    "fillers dropped": ("juice [/] &-um juice [/] juice .", "juice juice juice .", "brown_eve01.cha"),
    "fragments and nonwords dropped": ("&~ss that ?", "that ?", "brown_eve01.cha"),
    "untranscribed dropped": ("xxx woof .", "woof .", "bates_free20_amy20.cha"),
    "omissions dropped": ("you 0v more cookies ?", "you more cookies ?", "brown_eve01.cha"),
    "shortenings filled in": ("build (th)em up .", "build them up .", "bernstein_children_alice1.cha"),
    "compounds split": ("how_about another graham_cracker ?", "how about another graham cracker ?",
                        "brown_eve01.cha"),
    "compound with shortening": ("it's a woof+(woof) .", "it's a woof woof .", "bates_free20_amy20.cha"),
    "clitics kept as written": ("where's your cup ?", "where's your cup ?", "brown_eve01.cha"),
    "special forms lose the marker": ("Mommy letter a@l .", "Mommy letter a .", "brown_eve01.cha"),
    "onomatopoeia compound": ("hoo_hoo_hoo_hoo_hoo@o !", "hoo hoo hoo hoo hoo !", "bates_free20_amy20.cha"),
    "pauses dropped": ("here (.) the dog's gonna go up the ladder .", "here the dog's gonna go up the ladder .",
                       "bates_free20_amy20.cha"),
    "tag markers become commas": ("oh (.) ‡ I took it .", "oh , I took it .", "brown_eve01.cha"),
    "overlap markers dropped": ("<what's this one> [>] ?", "what's this one ?", "bates_free20_amy20.cha"),
    "postcodes dropped": ("more cookie . [+ IMP]", "more cookie .", "brown_eve01.cha"),
    "comments dropped": ('+" Hello [=! laugh] .', "Hello .", "bernstein_interview_alice1.cha"),
    "best guess and stress marks dropped": ("what is [!] that ?", "what is that ?", "bates_free20_amy20.cha"),
    "lengthening removed": ("mi:lk .", "milk .", "brown_eve01.cha"),
    "trail off ends with .": ("I don't know +...", "I don't know .", "bates_free20_amy20.cha"),
    "interrupted question ends with ?": ("<what do you> [<] +/?", "what do you ?",
                                         "Braunwald/1-05-11.xml.gz u453 as CHAT"),
    "CA symbols removed": ("get all my ↑na↓na ↗ (2.7)", "get all my nana .", "Forrester/061.xml.gz u3 as CHAT"),
    "time bullets removed": ("build (th)em up . \x1528461_29938\x15", "build them up .",
                             "bernstein_children_alice1.cha"),
}


@pytest.mark.parametrize("rule", CHAT_RULES)
def test_chat_cleaning_rule(rule):
    before, after, _ = CHAT_RULES[rule]
    assert clean_chat(before) == (after, None)


@pytest.mark.parametrize("before, reason", [("yyy .", "untranscribed"), ("xxx [>] ?", "untranscribed"),
                                            ("&um .", "filler_or_fragment"), ("0 [=! laughs louder] .", "nonverbal"),
                                            ("&=laughs [<] .", "nonverbal"), ("(.) .", "nonverbal")])
def test_empty_utterances_are_dropped_with_a_reason(before, reason):
    assert clean_chat(before) == ("", reason)


def _u(body: str) -> ET.Element:
    return ET.fromstring(f'<u xmlns="http://www.talkbank.org/ns/talkbank" who="MOT">{body}</u>')


# The XML encodings of the same codes, as they occur in the shared 2013 XML files
XML_RULES = {
    "retracing group kept": ('<g><w>no</w><k type="retracing"/></g><w>no</w><w>way</w><t type="q"></t>',
                             "no no way ?"),  # Manchester/nic/nic03b u422
    "shortening and replacement": ('<w>pus<shortening>h</shortening></w><w>en<replacement><w>them</w>'
                                   '</replacement></w><t type="p"></t>', "push them ."),  # Demetras1/tre12 u18
    "repetition": ('<g><w>dolly</w><w untranscribed="unintelligible">xxx</w><r times="5"/></g><t type="p"></t>',
                   "dolly dolly dolly dolly dolly ."),  # Brown/Eve/eve01 u594
    "compound with shortening": ('<w>it\'s</w><w>a</w><w>woof<wk type="cmp"/><shortening>woof</shortening></w>'
                                 '<t type="p"></t>', "it's a woof woof ."),  # Bates/Free20/amy20 u8
    "filler, fragment, omission": ('<w type="filler">um</w><w type="fragment">ha</w><w>you</w>'
                                   '<w type="omission">v</w><w>more</w><t type="q"></t>', "you more ?"),
    "drawl and CA marks inside a word": ('<w>o<p type="drawl"/>h</w><w><ca-delimiter type="begin" label="faster"/>'
                                         'give</w><s type="level"/><t type="missing CA terminator"></t>',
                                         "oh give ."),  # Forrester u204, u39
    "tag marker, pause, event": ('<w>oh</w><pause symbolic-length="simple"/><tagMarker type="vocative"/><w>I</w>'
                                 '<e><action/></e><w>took</w><w>it</w><t type="p"></t>', "oh , I took it ."),
    "trail off question": ('<w>what</w><t type="trail off question"></t>', "what ?"),
}


@pytest.mark.parametrize("rule", XML_RULES)
def test_xml_cleaning_rule(rule):
    body, after = XML_RULES[rule]
    assert clean_xml_utterance(_u(body)) == (after, None)


def test_xml_untranscribed_utterance_is_dropped():
    assert clean_xml_utterance(_u('<w untranscribed="unintelligible">xxx</w><t type="p"></t>')) == ("", "untranscribed")


def _by_index(transcript):
    return {u.index: (u.speaker, u.role, u.text) for u in transcript.utterances}


def test_chat_and_xml_give_the_same_utterances_bates_amy20():
    from_chat = read_chat(EMBEDDED_CHA / "bates_free20_amy20.cha")
    from_xml = read_xml(EMBEDDED_CHILDES / "Eng-NA/Bates/Free20/amy20.xml.gz")
    assert len(from_chat.utterances) == len(from_xml.utterances) == 109
    assert _by_index(from_chat) == _by_index(from_xml)
    assert from_chat.dropped == from_xml.dropped
    assert from_chat.participants == from_xml.participants  # amy is role "Child" in both: made the target child


# brown_eve01.cha is a later CHAT release (2023) than the 2013 XML of eve01: all 1,588 utterances line up and these
# 21 kept ones were re-transcribed (every other of the 1,548 kept utterances is identical):
EVE01_RETRANSCRIBED = {
    25: "xxx (th)at ? / XML: xxx at ?",
    82: "wanna / want to", 440: "hafta / have to", 674: "wanna / want to", 1222: "hafta / have to",
    1403: "hafta / have to", 1423: "wanna / want to",
    191: "hm: / hmm", 215: "hm: / hmm",
    297: "<choo_choochoo_choo> [/] choo_choo / choo+choo+choo+choo (typo in the CHAT release)",
    500: "taperecorder / tape+recorder", 501: "", 507: "", 522: "", 524: "", 525: "", 527: "", 528: "", 530: "",
    1523: "",
    1479: "like a [: to] swing / like a swing",
}


def test_chat_and_xml_give_the_same_utterances_brown_eve01():
    from_chat = read_chat(EMBEDDED_CHA / "brown_eve01.cha")
    from_xml = read_xml(EMBEDDED_CHILDES / "Eng-NA/Brown/Eve/eve01.xml.gz")
    chat, xml = _by_index(from_chat), _by_index(from_xml)
    assert chat.keys() == xml.keys() and len(chat) == 1548
    differing = {i for i in chat if chat[i] != xml[i]}
    assert differing == set(EVE01_RETRANSCRIBED)
    assert len(differing) / len(chat) < 0.014
    assert from_chat.dropped == from_xml.dropped == {"untranscribed": 38, "nonverbal": 2}
    assert xml[1302] == ("MOT", "Mother", "wait wait wait wait wait wait .")  # [x 6] in XML, [/] x5 in CHAT


@pytest.mark.parametrize("path", sorted(EMBEDDED_CHILDES.rglob("*.xml.gz"))[::10], ids=lambda p: p.name)
def test_every_xml_utterance_is_kept_or_counted(path):
    root = ET.fromstring(gzip.decompress(path.read_bytes()))
    transcript = read_xml(path)
    assert len(transcript.utterances) + sum(transcript.dropped.values()) == len(list(root.iter(NS + "u")))
    assert not transcript.warnings
    for u in transcript.utterances:
        assert u.text.endswith((" .", " ?", " !")) and u.terminator == u.text[-1]
        assert clean_chat(u.text) == (u.text, None)  # cleaned text is clean CHAT: nothing left to remove


@pytest.mark.parametrize("name", ["bernstein_children_alice1.cha", "bernstein_interview_alice1.cha"])
def test_chat_reader_on_bullets_and_continuation_lines(name):
    transcript = read_chat(EMBEDDED_CHILDES / "Eng-NA/Bernstein" / name)
    assert not transcript.warnings and transcript.corpus == "Bernstein"
    texts = [u.text for u in transcript.utterances]
    assert texts and not any("\x15" in t or "_" in t for t in texts)
    if name == "bernstein_children_alice1.cha":
        assert transcript.participants["CHI"].age == "1;01"
    else:  # a main tier continued on two tab-indented lines (file lines 35-37) is one utterance
        assert ("actually , I was gonna ask you where you got them she has got bigger and smaller ones she has got "
                "small wooden ones and great big cardboard ones .") in texts


CHAT_PIECES = ["xxx", "yyy", "&-uh", "&+fr", "&=laughs", "0v", "0", "(th)at", "a@l", "woof+(woof)", "graham_cracker",
               "[/]", "[//]", "[: them]", "[x 3]", "[+ IMP]", "[=! laughs]", "<", ">", "(.)", "(1.5)", "‡", "„",
               ",", ".", "?", "!", "+...", "+/?", '+"', "+<", "m:hm", "↑", "⌈", "°", "[", "]", "(", ")", "@", "&",
               "+", "_", "\x15", "no", "what's", "Eve"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(CHAT_PIECES), st.text(max_size=6)), max_size=12),
       st.sampled_from([" ", ""]))
def test_chat_cleaner_fuzz_never_fails_and_is_idempotent(pieces, separator):
    text, reason = clean_chat(separator.join(pieces))
    if reason is None:
        assert text.endswith((" .", " ?", " !")) and "  " not in text
        assert clean_chat(text) == (text, None)
    else:
        assert text == "" and reason in ("untranscribed", "filler_or_fragment", "nonverbal")


def test_splits_are_seeded_disjoint_and_complete():
    ids = [f"corpus/t{i:03d}" for i in range(100)]
    splits = split_transcripts(ids, seed=3)
    assert split_transcripts(list(reversed(ids)), seed=3) == splits
    assert split_transcripts(ids, seed=4) != splits
    assert sorted(sum(splits.values(), [])) == ids
    assert {k: len(v) for k, v in splits.items()} == {"train": 83, "val": 2, "dpo": 10, "eval": 5}
    with pytest.raises(CorpusError, match="t001 is in split train and in split eval"):
        check_disjoint({"train": ["t001"], "eval": ["t001"]})
    with pytest.raises(CorpusError, match="5 transcripts cannot fill"):
        split_transcripts(ids[:5])


def _blocks(path: Path) -> list[list[str]]:
    return [block.split("\n") for block in path.read_text().split("\n\n") if block.strip()]


def test_build_writes_every_output(corpus_small_build):
    out = corpus_small_build
    stats = json.loads((out / "stats.json").read_text())
    for key in ("transcripts", "utterances", "words_by_role", "triplets", "tokens", "dropped", "seconds"):
        assert key in stats
    assert stats["transcripts"] == len(small_childes_files()) == 23
    splits = json.loads((out / "splits.json").read_text())
    check_disjoint(splits)
    assert {k: len(v) for k, v in splits.items()} == stats["transcripts_by_split"] == {
        "train": 10, "val": 2, "dpo": 6, "eval": 5}
    for split in ("train", "val", "dpo", "eval"):
        blocks = _blocks(out / f"{split}.txt")
        assert len(blocks) == stats["triplets"][split] > 0
        assert stats["tokens"][split] > 3 * len(blocks)
    assert stats["words_by_role"]["Target_Child"] > 1000 and stats["words_by_role"]["Mother"] > 1000
    assert set(stats["dropped"]) == {"untranscribed", "nonverbal", "filler_or_fragment"}
    prompts = read_prompts(out / "prompts.txt")
    assert len(prompts) == stats["prompts"] > 100 and len(set(prompts)) == len(prompts)
    assert all(len(p.split()) >= 4 and not p.startswith("*") for p in prompts)


def test_triplets_are_adjacent_caregiver_child_caregiver(corpus_small_build):
    caregiver_tags = {ROLE_TAGS[role] for role in CAREGIVER_ROLES}
    splits = json.loads((corpus_small_build / "splits.json").read_text())
    files = {transcripts.transcript_id(p, p.parent): p for p in small_childes_files()}
    lines = {}  # every run of adjacent kept utterances of the train transcripts, as written
    for tid in splits["train"]:
        transcript = read_transcript(files[tid])
        for a, b, c in zip(transcript.utterances, transcript.utterances[1:], transcript.utterances[2:]):
            if c.index == a.index + 2:
                lines[(a.line, b.line, c.line)] = True
    blocks = _blocks(corpus_small_build / "train.txt")
    for block in blocks:
        assert len(block) == 3
        assert block[0].split()[0] in caregiver_tags and block[2].split()[0] in caregiver_tags
        assert block[1].startswith("*CHI: ")
        assert tuple(block) in lines
    assert {block[0].split()[0] for block in blocks} >= {"*MOT:", "*INV:"}


def test_natural_pairs_follow_the_paper(corpus_small_build):
    tokenizer = Tokenizer(corpus_small_build / "tokenizer.model")
    splits = json.loads((corpus_small_build / "splits.json").read_text())
    files = {transcripts.transcript_id(p, p.parent): p for p in small_childes_files()}
    for split in ("dpo", "eval"):
        child_replies = {}  # text -> transcripts it occurs in
        turns = set()
        for tid in splits[split]:
            transcript = read_transcript(files[tid])
            for u in transcript.utterances:
                if u.role == "Target_Child":
                    child_replies.setdefault(u.line, set()).add(tid)
            turns |= {(a.line, b.line, tid) for a, b in zip(transcript.utterances, transcript.utterances[1:])
                      if b.index == a.index + 1}
        for match in ("words", "tokens"):
            for overlap in ("overlap", "nooverlap"):
                records = [json.loads(line) for line in
                           (corpus_small_build / "pairs" / f"{split}_{match}_{overlap}.jsonl").open()]
                assert len(records) > 10
                for r in records:
                    assert r["prompt"].startswith("*MOT: ") and len(r["prompt"].split()) >= 5
                    assert (r["prompt"], r["chosen"], r["transcript"]) in turns
                    assert r["rejected"] != r["chosen"]
                    assert child_replies[r["rejected"]] - {r["transcript"]}  # from another transcript
                    chosen, rejected = r["chosen"][6:], r["rejected"][6:]
                    if match == "words":
                        assert len(chosen.split()) == len(rejected.split())
                    else:
                        assert len(tokenizer.encode(chosen)) == len(tokenizer.encode(rejected))
                    if overlap == "nooverlap":
                        assert not corpus._lexical(r["prompt"][6:]) & corpus._lexical(chosen)
                assert read_pairs(corpus_small_build / "pairs" / f"{split}_{match}_{overlap}.jsonl") == [
                    Pair(r["prompt"], r["chosen"], r["rejected"]) for r in records]


def test_build_is_cached_and_rebuilt_when_options_change(corpus_small_build, tmp_path):
    stats = json.loads((corpus_small_build / "stats.json").read_text())
    before = {p: p.stat().st_mtime_ns for p in corpus_small_build.rglob("*")}
    again = build_corpus(small_childes_files(), corpus_small_build, progress=False, **SMALL_BUILD_OPTIONS)
    assert again == stats
    assert {p: p.stat().st_mtime_ns for p in corpus_small_build.rglob("*")} == before
    copy = tmp_path / "copy"
    shutil.copytree(corpus_small_build, copy)
    rebuilt = build_corpus(small_childes_files(), copy, progress=False,
                           **{**SMALL_BUILD_OPTIONS, "seed": 1, "vocab_size": 450}, all_windows=True)
    assert rebuilt["build_key"] != stats["build_key"]
    assert (copy / "splits.json").read_text() != (corpus_small_build / "splits.json").read_text()
    # every window of three: more of them than caregiver-child-caregiver ones, any speakers
    assert sum(rebuilt["triplets"].values()) > sum(stats["triplets"].values())


def test_caregivers_choose_who_opens_and_closes_a_triplet(corpus_small_build, tmp_path):
    ours = json.loads((corpus_small_build / "stats.json").read_text())
    paper = build_corpus(small_childes_files(), tmp_path / "paper", progress=False, **SMALL_BUILD_OPTIONS,
                         caregivers=caregiver_roles("paper"))
    # both builds count both sets, and each writes the triplets of its own
    assert paper["triplets_by_caregivers"] == ours["triplets_by_caregivers"]
    assert paper["triplets"] == paper["triplets_by_caregivers"]["paper"]
    assert ours["triplets"] == ours["triplets_by_caregivers"]["all"]
    blocks = (tmp_path / "paper" / "train.txt").read_text().strip().split("\n\n")
    assert len(blocks) == paper["triplets"]["train"] > 0
    assert all(b.split("\n")[0][:5] in ("*MOT:", "*FAT:", "*INV:") and b.split("\n")[2][:5] in ("*MOT:", "*FAT:", "*INV:")
               for b in blocks)
    # a grandmother opens a triplet of ours, not one of the paper's (the small sample has only MOT, FAT and INV)
    chat = tmp_path / "grandmother.cha"
    chat.write_text("@UTF8\n@Begin\n@Participants:\tCHI Target_Child , GRM Grandmother , MOT Mother\n"
                    "*GRM:\twhat's that ?\n*CHI:\ta chicken .\n*MOT:\tyes a chicken .\n*CHI:\tchicken .\n"
                    "*MOT:\twhere is it ?\n@End\n")
    windows = {name: [[u.role for u in w] for w in triplets(read_transcript(chat), caregivers=caregiver_roles(name))]
               for name in ("all", "paper")}
    assert windows == {"all": [["Grandmother", "Target_Child", "Mother"], ["Mother", "Target_Child", "Mother"]],
                       "paper": [["Mother", "Target_Child", "Mother"]]}
    assert caregiver_roles("mot, GRM") == {"Mother", "Grandmother"}
    with pytest.raises(CorpusError, match="--caregivers 'MOT,CHI': CHI is not an adult speaker code"):
        caregiver_roles("MOT,CHI")


def test_bad_files_are_warned_about_skipped_and_counted(tmp_path):
    for path in small_childes_files()[:8]:
        shutil.copy(path, tmp_path / path.name)
    data = gzip.decompress(small_childes_files()[0].read_bytes())
    (tmp_path / "broken.xml").write_bytes(data[: len(data) // 2])
    cha = (EMBEDDED_CHA / "bates_free20_amy20.cha").read_text().replace("*MOT:\twhat's that ?",
                                                                         "MOT what's that ?", 1)
    (tmp_path / "bad_line.cha").write_text(cha)
    stats = build_corpus([tmp_path], tmp_path / "out", vocab_size=400, progress=False)
    assert stats["dropped"]["unreadable_file"] == 1 and stats["dropped"]["malformed_line"] == 1
    assert stats["transcripts"] == 9
    warnings = (tmp_path / "out" / "warnings.txt").read_text().splitlines()
    assert any(w.startswith(f"{tmp_path / 'broken.xml'}:") and "broken XML" in w for w in warnings)
    assert any(w.startswith(f"{tmp_path / 'bad_line.cha'}:") for w in warnings)


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "missing", "no such file or folder"),
    (lambda tmp: tmp, "no transcripts found"),
])
def test_cli_bad_input_is_one_error_line(tmp_path, capsys, make_input, message):
    with pytest.raises(SystemExit) as exit_:
        corpus.main(["--childes", str(make_input(tmp_path)), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
    assert str(make_input(tmp_path)) in stderr


def test_cli_no_dialogue_is_an_error(tmp_path, capsys):
    adults_only = EMBEDDED_CHILDES / "Eng-NA/Bernstein/bernstein_interview_alice1.cha"
    for i in range(8):
        shutil.copy(adults_only, tmp_path / f"interview{i}.cha")
    with pytest.raises(SystemExit) as exit_:
        corpus.main(["--childes", str(tmp_path), "--out", str(tmp_path / "out"), "--vocab-size", "400"])
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert "no caregiver-child-caregiver triplet" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "out" / "stats.json").exists()


def test_cli_builds_and_prints_a_summary(tmp_path):
    """The one test of the corpus stage as users start it, `python -m llamalogue.corpus`, in its own process."""
    inputs = [str(p) for p in small_childes_files()[:12]]
    result = subprocess.run([sys.executable, "-m", "llamalogue.corpus", "--childes", *inputs, "--out",
                             str(tmp_path / "out"), "--vocab-size", "400", "--workers", "1"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "12 transcripts" in result.stdout and "triplets train" in result.stdout
    assert "file/s" in result.stdout  # tqdm throughput
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["transcripts"] == 12


@pytest.mark.skipif(not PAPER_DPO.is_dir(), reason=f"paper data not found at {PAPER_DPO} (set LLAMALOGUE_SHARED)")
def test_read_pairs_reads_the_papers_files():
    natural = read_pairs(PAPER_DPO / "huggingface_dpo_format.json")
    words_csv = read_pairs(PAPER_DPO / "len_pairs_no_overlap_1.csv")
    assert len(natural) == 18000 and len(words_csv) == 25548
    assert len(read_pairs(PAPER_DPO / "tok_pairs_no_overlap_1.csv")) == 25520
    assert words_csv[:18000] == natural  # the DPO train set = the first 18,000 rows (shared README)
    assert words_csv[18000:] == read_pairs(PAPER_DPO / "huggingface_dpo_format_eval.json")
    assert natural[0] == Pair("*MOT: what is that ?", "*CHI: it looks like a gun .", "*CHI: you do it like that .")
    synthetic = read_pairs(PAPER_DPO / "synthetic_dpo_format.json")
    assert synthetic[0] == Pair("*MOT: what is that ?", "*CHI: it is a ball.", "*CHI: you do it like that .")
    assert [p.prompt for p in synthetic] == [p.prompt for p in natural]


def test_read_pairs_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "*MOT: hi ."}\n')
    with pytest.raises(CorpusError, match="bad.jsonl: no usable pairs .*bad.jsonl:1: chosen is missing"):
        read_pairs(bad)
    with pytest.raises(CorpusError, match="no such pairs file"):
        read_pairs(tmp_path / "missing.json")


def test_corpus_part_takes_the_first_words_in_whole_triplets(corpus_small_build, tmp_path):
    """scripts/corpus_part.py: a part is the triplets that start within its words, the last one reaching --words;
    the part after --words M is --skip-words M, with no triplet in both; the source's other files are kept; a request
    beyond the text fails with one line naming the flag and writes nothing."""
    from llamalogue.corpus.dialogue_files import read_documents
    from llamalogue.word_budget import count_words

    source = [t.strip("\n") for t in read_documents(corpus_small_build / "train.txt")]
    script = [sys.executable, str(REPO / "scripts" / "corpus_part.py"), "--data", str(corpus_small_build)]
    for name, options in (("first", ["--words", "100"]), ("next", ["--words", "300", "--skip-words", "100"])):
        subprocess.run([*script, *options, "--out", str(tmp_path / name)], check=True, capture_output=True)
    first, after = (read_documents(tmp_path / name / "train.txt") for name in ("first", "next"))
    words = [count_words(t) for t in after]
    assert sum(words) >= 300 and sum(words) - words[-1] < 300  # whole triplets, the last one reaches 300
    assert sum(count_words(t) for t in first[:-1]) < 100 <= sum(count_words(t) for t in first)
    assert first + after == source[: len(first) + len(after)]  # the next part starts where the first ends
    assert (tmp_path / "next" / "tokenizer.model").read_bytes() == (corpus_small_build / "tokenizer.model").read_bytes()
    assert sorted(p.name for p in (tmp_path / "next" / "pairs").iterdir()) == sorted(
        p.name for p in (corpus_small_build / "pairs").iterdir())
    assert json.loads((tmp_path / "next" / "part.json").read_text())["words"] == sum(words)
    too_many = subprocess.run([*script, "--words", "100000000", "--out", str(tmp_path / "big")], capture_output=True,
                              text=True)
    assert too_many.returncode == 2 and "--words 100000000" in too_many.stderr and not (tmp_path / "big").exists()
