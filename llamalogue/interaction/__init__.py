"""Interaction: a student that learns from its teacher's corrections, the BabyLM 2025 interaction baseline's method
in dialogue (`python -m llamalogue.interaction`).

    config.py        InteractionConfig: the rounds, sampling, SimPO + LM settings; presets tiny, small, baseline
    corrections.py   the teacher's correction of a child's reply: the instruction, the cut, the checks, the cache
    training.py      the rounds: sample -> correct -> LM epochs -> SimPO + lambda LM epochs; the run folder
    __main__.py      the command line
"""
