"""The transcript readers under damage: mutated .xml.gz, .xml and .cha files are read or refused with their reason
(CorpusError naming the file, never another exception); other encodings are refused or decoded, not turned into
mojibake; and the files that cannot be read take no place in the splits."""

import gzip
import random
import shutil

import pytest

from conftest import EMBEDDED_CHILDES, REPO, small_childes_files
from llamalogue.corpus.build import build_corpus
from llamalogue.corpus.transcripts import CorpusError, Transcript, read_transcript

CHA = REPO / "data" / "cha" / "bates_free20_amy20.cha"
XML_GZ = EMBEDDED_CHILDES / "Eng-NA/Bates/Free20/amy20.xml.gz"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of the faults a file meets on a disk or in a download: flipped bytes, a cut, a lost or a doubled block."""
    data = bytearray(data)
    where = rng.randrange(len(data) // 8, len(data))  # past the header, where it hurts the content
    kind = rng.choice(["flip", "truncate", "delete", "insert"])
    if kind == "flip":
        for i in rng.sample(range(where, len(data)), min(8, len(data) - where)):
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[where:]
    elif kind == "delete":
        del data[where : where + rng.randrange(1, 200)]
    else:
        data[where:where] = data[where - 100 : where]
    return bytes(data)


@pytest.mark.parametrize("suffix", [".xml.gz", ".xml", ".cha"])
def test_mutated_files_are_read_or_refused_naming_the_file(tmp_path, suffix):
    original = {".xml.gz": XML_GZ.read_bytes(), ".xml": gzip.decompress(XML_GZ.read_bytes()),
                ".cha": CHA.read_bytes()}[suffix]
    rng = random.Random(suffix)
    refused = 0
    for i in range(60):
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(mutate(original, rng))
        try:
            assert isinstance(read_transcript(path), Transcript)
        except CorpusError as error:  # anything else (zlib.error, UnicodeDecodeError, ...) fails the test
            assert str(error).startswith(str(path)) and "\n" not in str(error)
            refused += 1
    if suffix == ".xml.gz":  # gzip's CRC catches every change
        assert refused == 60
    else:  # some damage is fatal to a file (broken XML, bytes that are not UTF-8), some is not
        assert 0 < refused < 60


def test_a_build_counts_every_damaged_file_and_gives_them_no_split_place(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for path in small_childes_files()[:12]:
        shutil.copy(path, good / path.name)
    with_bad = tmp_path / "with_bad"
    shutil.copytree(good, with_bad)
    data = XML_GZ.read_bytes()
    damaged = {"corrupt.xml.gz": data[:200] + bytes(b ^ 0x55 for b in data[200:2000]) + data[2000:],
               "cp1252.cha": CHA.read_text(encoding="utf-8").replace("what", "caf\u00e9 what", 1).encode("cp1252"),
               "empty.cha": b"@UTF8\n@Begin\n@End\n"}
    for name, content in damaged.items():
        (with_bad / name).write_bytes(content)
    clean = build_corpus([good], tmp_path / "clean", vocab_size=400, progress=False)
    stats = build_corpus([with_bad], tmp_path / "out", vocab_size=400, progress=False)
    assert stats["dropped"]["unreadable_file"] == 3 and stats["transcripts"] == clean["transcripts"] == 12
    assert (tmp_path / "out" / "splits.json").read_text() == (tmp_path / "clean" / "splits.json").read_text()
    warnings = (tmp_path / "out" / "warnings.txt").read_text()
    assert f"{with_bad / 'corrupt.xml.gz'}: cannot read" in warnings
    assert f"{with_bad / 'cp1252.cha'}: not UTF-8" in warnings
    assert f"{with_bad / 'empty.cha'}: no utterances" in warnings


def test_xml_declaring_an_unknown_encoding_is_refused(tmp_path):
    path = tmp_path / "odd.xml"
    path.write_bytes(b'<?xml version="1.0" encoding="foo"?><CHAT xmlns="http://www.talkbank.org/ns/talkbank"/>')
    with pytest.raises(CorpusError, match="odd.xml:1: unreadable XML"):
        read_transcript(path)


def test_utf16_chat_is_read_as_its_utf8_original(tmp_path):
    utf16 = tmp_path / "amy.cha"
    utf16.write_bytes(CHA.read_text(encoding="utf-8").encode("utf-16"))  # with its byte-order mark
    original, decoded = read_transcript(CHA), read_transcript(utf16)
    assert decoded.utterances == original.utterances and len(decoded.utterances) > 100


def test_too_few_readable_transcripts_name_the_unreadable_ones(tmp_path):
    for i in range(6):
        (tmp_path / f"bad{i}.cha").write_bytes(b"\xff\xfe\x00garbage")
    shutil.copy(CHA, tmp_path / "amy.cha")
    with pytest.raises(CorpusError, match=r"1 transcripts cannot fill 4 disjoint splits .*6 of 7 files unreadable"):
        build_corpus([tmp_path], tmp_path / "out", vocab_size=400, progress=False)
    assert not (tmp_path / "out" / "stats.json").exists()
