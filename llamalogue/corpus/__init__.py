"""Stage 1, the corpus: CHILDES transcripts -> caregiver-child-caregiver triplets, splits, preference pairs and the
tokenizer (`python -m llamalogue.corpus`).

    transcripts.py     reading TalkBank XML and CHAT into utterances
    chat_cleaning.py   cleaning one utterance (each rule with a real before/after example)
    build.py           triplets, splits, pairs, the tokenizer and stats.json: the command line
    dialogue_files.py  the files it writes, as every later stage reads them (prompts, pairs, triplets)
"""
