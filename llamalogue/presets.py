"""Named presets for every stage's config dataclass: `tiny` (tests, seconds), `small` (the CPU default), `paper` (the
paper's settings, for a GPU). One API for every stage's config (TrainConfig, DPOConfig, RewardModelConfig, RLConfig,
InteractionConfig):

    Config.from_preset("small", lr=1e-4)                # the preset, then the options given
    Config.from_saved(record["train"], max_steps=500)   # a run's own settings, to resume it, with what may change

None is a value like any other (early_stop_kl=None: never stop early): a command line passes only the options given.
A preset is one dict entry in the stage's PRESETS; a config class names it with `presets = PRESETS` and lists the
fields a resumed run may change in `resume_may_change` (where it stops, how often it reports: never what it learns).
llamalogue.run_shell builds every stage's config with these two methods; `stop_setting` names the field that
stops one invocation early (--max-steps), which a resumed run not given it sets to 0: on to the end.
"""

import dataclasses
from typing import ClassVar

from llamalogue.run_dir import RunError

DEFAULT_PRESET = "small"  # a new run's preset when a command line names none


class Presets:
    presets: ClassVar[dict[str, dict]] = {}
    resume_may_change: ClassVar[frozenset[str]] = frozenset()
    stop_setting: ClassVar[str | None] = "max_steps"  # None: a stage that cannot stop early

    @classmethod
    def _known(cls, values: dict, where: str) -> dict:
        """The values, every one a field of the config (else a ValueError naming `where`)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown {cls.__name__} option(s): {', '.join(unknown)}")
        return values

    @classmethod
    def from_preset(cls, name: str, **overrides):
        if name not in cls.presets:
            raise ValueError(f"--preset {name!r}: unknown; choose one of {', '.join(cls.presets)}")
        return cls(**{**cls.presets[name], **cls._known(overrides, "options")})

    @classmethod
    def from_saved(cls, saved: dict, **overrides):
        """The config a run recorded (its "train" settings), with the options given now; changing any other than
        `resume_may_change` would mix two trainings in one run, and is refused naming the settings."""
        try:
            config = cls(**cls._known(saved, "the run's config.json"))
        except (TypeError, ValueError) as error:  # a null or missing field in a damaged record
            raise RunError(f"--resume: the run's config.json holds bad settings ({error})") from None
        requested = cls._known(overrides, "options")
        changed = {name: value for name, value in requested.items()
                   if name not in cls.resume_may_change and getattr(config, name) != value}
        if changed:
            raise RunError("--resume: the run was trained with other settings ("
                           + ", ".join(f"{name}={getattr(config, name)!r}, not {value!r}"
                                       for name, value in changed.items()) + ")")
        return dataclasses.replace(config, **requested)

    @classmethod
    def options_given(cls, args) -> dict:
        """The options a command line was given: its parsed arguments that are fields of the config and not None
        (argparse's None: not given), and "preset" when it names one (llamalogue.run_shell builds the config)."""
        names = {f.name for f in dataclasses.fields(cls)} | {"preset"}
        return {name: value for name, value in vars(args).items() if name in names and value is not None}

    def check_at_least(self, minimum, *names: str) -> None:
        """ValueError naming the option (`--batch-size 0: must be at least 1`) when a field is below minimum."""
        for name in names:
            if getattr(self, name) < minimum:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least {minimum}")
