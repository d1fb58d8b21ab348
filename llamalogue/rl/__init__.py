"""Stage 4, reinforcement learning: the baby answers caregivers, a reward scores the answers (`python train_ppo.py`).

    rewards.py  the six rewards: bleu, semsim, llm, confidence (the paper's), pmi and preference (ours)
    kl.py       the KL penalty against the frozen base: estimators and the adaptive coefficient
    ppo.py      PPO: rollout, shaping, GAE, the clipped update
    run.py      a run: prompts and a reward in, a run folder out
"""
