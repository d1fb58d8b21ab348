"""Few-shot examples for the teacher: real mother -> child exchanges shown before the caregiver's utterance, so that a
small instruct model answers in the child's voice, short and in CHILDES style (llamalogue.teacher.llm)."""

from pathlib import Path

from llamalogue.teacher.reply_text import content_words

# Real mother -> child exchanges from CHILDES (TalkBank XML, CC BY-NC-SA 3.0): Brown/Adam adam30 (age 3;5),
# Thomas 3-00-10 .. 3-02-11 (3;0-3;2), Providence/Lily lil30, lil32, lil38. Picked by hand among adjacent MOT -> CHI
# turns with a mother utterance of more than 3 words and a short, on-topic, intelligible child answer (`have_to`
# written `have to`). None of these transcripts is in the embedded sample data/childes, so the examples belong to
# none of its splits; with --examples DIR the pool is the training split of DIR instead.
DEFAULT_EXAMPLES = [
    ("what do you think goes there ?", "the eye ."),
    ("what kind of race ?", "for some cars ."),
    ("oh you want me to put all of mine in ?", "no just save some ."),
    ("I don't think you have to cut it .", "maybe we can color it ."),
    ("I don't think you need to color that .", "it's fun ."),
    ("and what did we do outside ?", "to buy some groceries ."),
    ("what did Daddy say about throwing that ball Adam ?", "Daddy said I can throw it ."),
    ("why are you taking him apart ?", "I want to do him ."),
    ("he can't see you because he doesn't have what ?", "some eyes ."),
    ("what are you talking about now ?", "those footballs things ."),
    ("shall we move your chair so you can see what's happening there ?", "he's running ."),
    ("do you like those sweeties ?", "yes I do ."),
    ("you have to be quiet at certain times don't you ?", "what for ?"),
    ("well you won't get anything if you don't be quiet .", "I want something ."),
    ("would you like some bananas in the custard .", "I didn't try custard ."),
    ("that's where the ducks are on the pond and the swans .", "I know ."),
    ("silly Mummy and who's a naughty child ?", "Mummy is ."),
    ("clipitty clop that's right .", "I'm a horse ."),
    ("would you like a little bit of sugar with it ?", "yes please ."),
    ("it looks like a seal doesn't it ?", "throwing snowballs ."),
    ("should we finish Horton or should I put him away ?", "put Horton away ."),
    ("a bird do you remember what these pink birds were called ?", "flamingo ."),
    ("it is a chicken house but I don't think it goes there .", "it goes here ."),
]





def read_examples(path) -> list[tuple[str, str]]:
    """(mother, child) exchanges from a data dir (its training split DIR/train.txt) or from any file in that format:
    one `*MOT: ...` / `*CHI: ...` line per utterance, blank lines between dialogues. Kept: a MOT line directly
    answered by a CHI line, the mother saying more than 3 words, the child 1-8 words, no unintelligible `xxx`."""
    path = Path(path)
    file = path / "train.txt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"--examples {path}: no such file (want a data dir with train.txt or a *MOT:/*CHI: "
                                f"file)")
    examples, previous = [], None
    for line in file.read_text(encoding="utf-8").splitlines():
        speaker = line[:5]
        if previous and previous[:5] == "*MOT:" and speaker == "*CHI:":
            mother, child = previous[5:].strip(), line[5:].strip()
            if len(content_words(mother)) > 3 and 1 <= len(content_words(child)) <= 8 and "xxx" not in child + mother:
                examples.append((mother, child))
        previous = line if line.strip() else None
    if not examples:
        raise ValueError(f"--examples {file}: no *MOT: line followed by a *CHI: line")
    return examples
