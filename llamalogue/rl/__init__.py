"""Stage 4, reinforcement learning: the baby answers caregivers, a reward scores the answers (`python train_ppo.py`).

    rewards.py           the six rewards: bleu, semsim, llm, confidence (the paper's), pmi and preference (ours);
                         zero, the control
    reward_interface.py  what every reward is (Reward) and may need (RewardSettings)
    kl.py                the KL penalty against the frozen base: estimators and the adaptive coefficient
    config.py            the settings of a run, for each algorithm (RLConfig, its presets)
    trainer.py           what every algorithm shares: the rollout with on-policy log-probs, scoring, the epochs,
                         the state
    ppo.py               PPO: a value head, shaping, GAE, the clipped update
    group.py             RLOO, GRPO, Dr. GRPO, GSPO, CISPO, DAPO: no value head, G replies per prompt judged against
                         each other
    run.py               a run: prompts and a reward in, a run folder out
"""
