"""The teacher: a small instruct LLM that answers caregivers as a child would, for synthetic DPO pairs and the
paper's PPO rewards (`python -m llamalogue.teacher`).

    config.py        TeacherConfig: the prompt layout, sampling settings and dtype, and the paper's settings
    few_shot.py      real CHILDES exchanges shown to the teacher before the caregiver's utterance
    reply_text.py    the rules a child reply must pass (written the CHILDES way, no echo, no loop)
    llm.py           the Teacher: sampling replies, their log-likelihoods, the judge's rating
    prefixes.py      what it keeps computed: example sets' prefixes and prompts' turns (KV caches)
    __main__.py      the command line that precomputes a reply cache
    reply_cache.py   the JSONL cache of its replies, which the runs share
"""
