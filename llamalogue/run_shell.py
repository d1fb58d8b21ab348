"""The run shell: what every training stage does around its loop, written once, so that a stage's `train` is its loop.

Every stage's `train` (pretraining, DPO, the reward model, RL, interaction) has one signature:

    train(folder: RunFolder, inputs, options: dict, device: str | None = None) -> dict

    folder   where the run is written and how its folder is taken: --out, --resume, --overwrite
    inputs   what the run is made from, a dataclass of the stage's (a corpus folder, an --init run, pairs, prompts)
    options  the settings a command line was given: fields of the stage's config, "preset" naming the preset
    returns  the run's summary, "interrupted": True when Ctrl-C stopped it (its command line then exits 130)

A stage's `train` meets the shell in this order:

    run = Run(folder, "dpo", DPOConfig, options, protected={"--init": init})
        the folder's rules (llamalogue.run_dir.open_run) checked, nothing written; run.saved is the record a
        resumed run continues (None: a new run) and run.config its settings, built one way for every stage:
            a new run    DPOConfig.from_preset(options["preset"], **the other options)     (no preset: small)
            resumed      DPOConfig.from_saved(saved["train"], max_steps=0, **options)
        (a resumed run keeps its settings, changed only where the config's resume_may_change allows; without
        --max-steps it goes on to the end of its schedule)
    run.check_inputs(fingerprints)      a resumed run goes on only with the inputs it was made from
    run.clear()                         a new run's folder emptied (--overwrite), once its inputs are read
    log = run.begin(scale, config, fingerprints, init=RUN, step=step, **fields)
        the record, RUN/config.json: {"stage", "scale" (one line: what is trained, at what size, where),
        "train" (the settings), "inputs" (their fingerprints), "init", the stage's own fields, "init_words_seen",
        "words_seen"}, written now for a new run and with the next checkpoint for a resumed one; the log,
        RUN/log.csv (a resumed run's rows after its checkpoint dropped: llamalogue.runlog.RunLog)
    with run:                           the loop; the first Ctrl-C sets run.interrupted (run_dir.StopOnCtrlC)
        ... a step; a loop that sees run.interrupted finishes the step, saves and stops ...
        run.progress(words)             the words seen: the --init's and this run's (llamalogue.word_budget)
        run.save(model, tokenizer, state)    RUN/checkpoint.pt and the record (llamalogue.checkpoint)
    run.stopped(f"step {step:,}")       True after Ctrl-C, with the one line saying where the checkpoint is

Several processes (pretraining under torchrun): `main_process=False` makes the shell check and read alone; only
rank 0 clears, writes, saves and prints.
"""

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from llamalogue.checkpoint import check_run, is_run_dir, load_config, save_checkpoint
from llamalogue.corpus.dialogue_files import read_prompts
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.run_dir import CONFIG, RunError, StopOnCtrlC, check_inputs, clear_run, init_inputs, open_run, write_json
from llamalogue.runlog import RunLog
from llamalogue.word_budget import plus


@dataclass
class RunFolder:
    """Where a run is written and how its folder is taken: a command line's --out, --resume and --overwrite."""

    out: Path
    resume: bool = False  # continue the checkpoint in `out` with the run's own inputs and settings
    overwrite: bool = False  # replace the run in `out`


def read_prompt_inputs(init, prompts_file) -> tuple[list[str], dict]:
    """The caregiver utterances a run answers (RL, interaction) and its record of what it is made from: the --init
    run's fingerprint (llamalogue.run_dir.init_inputs) and the prompts' SHA-256, which a resumed run must match.
    Checked before any teacher loads: --init a whole run, the prompts file there and not empty."""
    if not is_run_dir(init):
        raise FileNotFoundError(f"--init {init}: not a llamalogue run directory (`python train_lm.py` makes one)")
    check_run(init)  # a damaged checkpoint fails here, before --out is touched
    if not Path(prompts_file).is_file():
        raise FileNotFoundError(f"--prompts {prompts_file}: no such file (the corpus stage writes DATA/prompts.txt: "
                                f"`python -m llamalogue.corpus --out DATA`)")
    prompts = read_prompts(Path(prompts_file))
    if not prompts:
        raise ValueError(f"--prompts {prompts_file}: no prompts in it")
    return prompts, {**init_inputs(init), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}


def settings(config_class, options: dict, saved: dict | None, **preset_choice):
    """The run's config: a new run's preset with the options over it, a resumed run's own settings with the options
    that may change. preset_choice: what else picks the preset's settings (RL's reward: RLConfig.from_preset)."""
    if saved is None:
        given = {name: value for name, value in options.items() if name != "preset"}
        return config_class.from_preset(options.get("preset", DEFAULT_PRESET), **preset_choice, **given)
    stop = {config_class.stop_setting: 0} if config_class.stop_setting else {}  # without it: on to the end
    return config_class.from_saved(saved["train"], **{**stop, **options})


class Run:
    """One run of a stage in its folder: opened (new, resumed or overwritten), recorded, saved, stopped by Ctrl-C.

    flags: the command line's own flags among --resume and --overwrite, named in the folder's messages."""

    def __init__(self, folder: RunFolder, stage: str, config_class, options: dict, protected: dict | None = None,
                 flags: tuple[str, ...] = ("--resume", "--overwrite"), main_process: bool = True, **preset_choice):
        self.out, self.stage, self.main_process = Path(folder.out), stage, main_process
        self.saved = open_run(self.out, stage, folder.resume, folder.overwrite, protected=protected, options=flags)
        self.config = settings(config_class, options, self.saved, **preset_choice)
        self.record: dict = {}
        self.ctrl_c = StopOnCtrlC()

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    def check_inputs(self, inputs: dict) -> None:
        """A resumed run goes on only with what it was made from: every input given equals the recorded one."""
        if self.resumed:
            check_inputs(self.out, self.saved, inputs)

    def clear(self) -> None:
        """A new run's folder made empty for it: the files of a run it held are deleted (open_run has checked that
        --overwrite allows it). Called once the stage has read its inputs, so that bad input deletes nothing."""
        if not self.resumed and self.main_process:
            clear_run(self.out)

    def begin(self, scale: str, config, inputs: dict, init=None, step: int = 0, words: int | None = 0,
              **fields) -> RunLog | None:
        """The run's record and its log (None outside the main process). init: the run this one starts from, whose
        words seen it carries on; step: where the run starts (a resumed run's checkpoint); words: those this run
        has shown its model by then; fields: the stage's own record entries."""
        self.record = {"stage": self.stage, "scale": scale, "train": asdict(config), "inputs": inputs, **fields}
        if init is not None:
            self.record.update(init=init, init_words_seen=load_config(init)["words_seen"])
        self.progress(words)
        if not self.main_process:
            return None
        if not self.resumed:  # a resumed run's record is written again with its next checkpoint
            write_json(self.out / CONFIG, self.record)
        return RunLog(self.out, resume_step=step if self.resumed else None)

    def words_seen(self, words: int | None) -> int | None:
        """The words the model has seen since pretraining began: the --init's, then the `words` of this run (None:
        unknown)."""
        carried = self.record.get("init_words_seen", 0)  # pretraining starts from nothing
        return None if words is None else plus(carried, words)

    def progress(self, words: int | None, **fields) -> None:
        """The record as the run goes: the words seen (words_seen) and the stage's counts that go with them
        (pretraining's tokens)."""
        self.record.update(fields, words_seen=self.words_seen(words))

    def check_loss(self, loss: float, step: int, remedy: str) -> None:
        """Stop on a loss that is not finite (a RunError naming the step), before the step updates the weights: the
        run's last good checkpoint stays. remedy: what to change (`lower --lr`)."""
        if not math.isfinite(loss):
            raise RunError(f"step {step}: the training loss is {loss}; stopping. The last good checkpoint in "
                           f"{self.out} is kept ({remedy})")

    def save(self, model, tokenizer, state: dict | None = None) -> None:
        """The checkpoint: the weights, what the stage needs to resume (state), and the record."""
        if self.main_process:
            save_checkpoint(self.out, model, tokenizer, self.record, state)

    def stops_early(self, stop_step: int, total_steps: int) -> list[str]:
        """The line to print when --max-steps stops this invocation before the end of its schedule (else none)."""
        if stop_step >= total_steps:
            return []
        return [f"stopping at step {stop_step:,} (--max-steps); `--resume` continues the same schedule"]

    def __enter__(self) -> "Run":
        self.ctrl_c.__enter__()
        return self

    def __exit__(self, *exception) -> None:
        self.ctrl_c.__exit__(*exception)

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C asked the loop to stop."""
        return self.ctrl_c.requested

    def interrupt(self) -> None:
        """Stop as after a Ctrl-C that another process caught (pretraining's processes stop together)."""
        self.ctrl_c.requested = True

    def stopped(self, where: str, early: str | None = None) -> bool:
        """Whether the run stopped before its end: by Ctrl-C, or by the option `early` names (--max-rounds). If so,
        one line says where its checkpoint is (`where`: "step 40") and that --resume goes on from there."""
        how = "interrupted" if self.interrupted else f"stopped ({early})" if early else None
        if how and self.main_process:
            print(f"{how}: checkpoint at {where} saved in {self.out}; `--resume` continues from there")
        return how is not None
