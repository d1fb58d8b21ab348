"""llamalogue: a small Llama pretrained on child-caregiver dialogue (CHILDES), aligned with DPO and PPO, evaluated
on minimal pairs. A from-scratch PyTorch reimplementation of Padovani, Bunzeck et al. (BabyLM 2025)."""
