"""Stage 3, alignment from preference pairs: a caregiver prompt, an appropriate and a random child reply.

    pairs.py          the pairs: natural (the real reply) or synthetic (the teacher's), held-out overlap dropped
    reply_scoring.py  log P(reply | prompt) of many replies in batches: the one rule DPO, the reward model and PMI share
    dpo.py            Direct Preference Optimization and its variants (`python train_dpo.py`)
    reward_model.py   a Bradley-Terry reward model on the same pairs (`python train_reward_model.py`)
"""
