"""Stage 2, pretraining: next-token prediction on the corpus's triplets (`python train_lm.py`).

    data.py        the triplets as token streams cut into windows; the corpus a run reads
    fused_loss.py  the output layer and the cross-entropy in one pass, never all the logits at once
    config.py      the settings of a run and the presets
    training.py    the loop, top to bottom
    milestones.py  checkpoints kept at N training tokens (the AoA evaluation and the checkpoint sweep read them)
    speed.py       bf16 autocast or fp32, compiled or eager: chosen by measurement on this machine
    processes.py   several processes under torchrun: setup, the means across them, resuming on another count
"""
