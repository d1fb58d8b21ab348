"""RL fine-tuning of a pretrained llamalogue against one reward, with one of seven algorithms: PPO (the default;
llamalogue/rl/ppo.py) or the critic-free RLOO, GRPO, Dr. GRPO, GSPO, CISPO and DAPO (llamalogue/rl/group.py), which
sample --group-size replies to each prompt and take the other replies as the baseline instead of a value head. The
run: llamalogue/rl/run.py.

    python train_ppo.py --reward confidence          # runs/lm-small + runs/data/prompts.txt -> runs/ppo-confidence
    python train_ppo.py --reward bleu --algorithm grpo --group-size 4 --out runs/grpo-bleu
    python train_ppo.py --init runs/lm-small --reward bleu --out runs/ppo-bleu --max-steps 20
    python train_ppo.py --reward pmi                 # contextual fit under the frozen baby model: no teacher
    python train_reward_model.py --init runs/lm-small --out runs/reward-model && \
        python train_ppo.py --reward preference --reward-model runs/reward-model
    python train_ppo.py --reward semsim --out runs/ppo-semsim --resume      # go on from the last checkpoint
    python train_reward_model.py --half 0 --out runs/rm-half0 && python train_reward_model.py --half 1 --out \
        runs/rm-half1 && python train_ppo.py --reward preference --reward-model runs/rm-half0 --judge runs/rm-half1 \
        --algorithm rloo --par --out runs/rloo-par       # a held-out judge, and a bounded reward

Rewards (llamalogue/rl/rewards.py): bleu (BLEU-1 against the teacher's reply), semsim (MiniLM cosine similarity to
it), llm (the teacher's 0-5 rating), confidence (rank of the reply's teacher log-likelihood among 10 teacher
samples), pmi (log P(reply | prompt) - mean log P(reply | other prompts)), preference (a Bradley-Terry reward model
trained on real vs random child replies), zero (0 for every reply: the control, the algorithm without a reward). The
teacher's replies to the run's prompts are computed once before training and kept in --teacher-cache, which the runs
share (a cache made for confidence, 10 replies per prompt, also serves bleu and semsim). `--preset paper` takes the
paper's settings and reward rules for the chosen reward (llamalogue.rl.config.PRESETS, PRESET_BY_REWARD).

--batch-size is the replies sampled per step and --total-prompts the replies sampled in the whole run (the episodes),
whatever the algorithm, so that runs compare at the same number of sampled replies: a step of a group algorithm
answers batch-size / group-size prompts, group-size times each (DAPO samples a group again while its rewards tie:
log.csv's resampled_groups).

Against reward hacking (llamalogue/rl/guards.py, llamalogue/rl/judge.py): --judge DIR scores the same replies with a
reward model the policy is never trained against (log.csv's judge_mean beside reward_raw_mean; generic_share is
always logged); --par bounds the reward, sigmoid(r(x, y) - r(x, y_ref)) with y_ref the reference model's reply;
several --reward-model directories are an ensemble (--ensemble mean|min); --repeat-penalty C takes C * (n - 1) / B
from a reply said n times in the step's B replies. Each works with every --algorithm.
"""

import argparse
import sys
from pathlib import Path

import torch

from llamalogue.cli import INTERRUPTED, USER_ERRORS, fail, positive_int
from llamalogue.presets import DEFAULT_PRESET
from llamalogue.rl.kl import KL_ESTIMATORS
from llamalogue.rl.config import ALGORITHMS, CLIP_RANGES, CRITIC_FREE_GROUP_SIZE, DEFAULT_CLIP_EPS, PRESETS, RLConfig
from llamalogue.rl.guards import ENSEMBLES
from llamalogue.rl.rewards import REWARDS
from llamalogue.rl.run import RLInputs, train
from llamalogue.run_shell import RunFolder
from llamalogue.teacher.config import DTYPES


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", choices=list(REWARDS), default=None, help="required unless --resume")
    parser.add_argument("--init", default="runs/lm-small", help="run dir of the starting (and reference) model")
    parser.add_argument("--out", default=None, help="run dir to write (default: runs/ppo-REWARD)")
    parser.add_argument("--data", default="runs/data", help="data dir of the corpus stage (default: %(default)s)")
    parser.add_argument("--prompts", default=None, help="caregiver prompts, one per line (default: DATA/prompts.txt)")
    parser.add_argument("--teacher", default=None, help="HF folder, .gguf or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--teacher-dtype", choices=DTYPES, default=None,
                        help="the teacher's sampling weights, our Llama backend (log-likelihoods are fp32): auto "
                             "(default) = bfloat16 where the CPU or GPU has bf16 products; recorded, so a resumed "
                             "run keeps it")
    parser.add_argument("--teacher-cache", default=None,
                        help="JSONL cache of the teacher's replies (default: ppo-teacher.jsonl beside --out)")
    parser.add_argument("--pmi-scorer", choices=["reference", "teacher"], default="reference",
                        help="pmi: whose log-likelihoods (default: the frozen reference baby model)")
    parser.add_argument("--pmi-k", type=int, default=4, help="pmi: other caregiver utterances per reply (default: 4)")
    parser.add_argument("--reward-model", nargs="+", default=["runs/reward-model"],
                        help="preference: the reward model's directory (default: %(default)s); several: an ensemble")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="mean",
                        help="preference with several --reward-model: their mean or minimum (default: %(default)s)")
    parser.add_argument("--judge", default=None,
                        help="a held-out reward model's directory: scores every step's replies (log.csv judge_mean), "
                             "never trained against")
    parser.add_argument("--par", action="store_true", default=None,
                        help="bounded reward: sigmoid(r(x, y) - r(x, y_ref)), y_ref the reference model's reply")
    parser.add_argument("--repeat-penalty", type=float, default=None,
                        help=f"C: a reply said n times among the step's B replies loses C * (n - 1) / B (default: {RLConfig.repeat_penalty})")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                        help=f"default: {RLConfig.algorithm}; ppo (a value head) or one of {', '.join(ALGORITHMS[1:])} "
                             f"(no value head: "
                             f"groups of replies)")
    parser.add_argument("--group-size", type=int, default=None,
                        help=f"replies sampled per prompt (default: {CRITIC_FREE_GROUP_SIZE} for the group "
                             f"algorithms, 1 for ppo)")
    parser.add_argument("--clip-eps", type=float, default=None,
                        help="eps_low: the ratio is clipped at 1 - eps_low (default: the algorithm's, "
                             + clip_defaults() + ")")
    parser.add_argument("--clip-eps-high", type=float, default=None,
                        help="eps_high: the ratio is clipped at 1 + eps_high (default: the algorithm's, else "
                             "--clip-eps)")
    parser.add_argument("--dynamic-sampling-tries", type=int, default=None,
                        help=f"dapo: times a group whose rewards all tie is sampled again before it is dropped "
                             f"(default: {RLConfig.dynamic_sampling_tries})")
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help=f"tiny (tests), small (CPU), paper (GPU, the paper's settings); default: {DEFAULT_PRESET}")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after N steps; --resume goes on from there")
    parser.add_argument("--keep-every", type=int, default=None,
                        help="keep a weights-only copy of the model every N steps in OUT/steps/step_N, for a curve "
                             "of the benchmarks over the run (evaluate.py --model OUT/steps/step_N); default: none")
    parser.add_argument("--total-prompts", type=int, default=None,
                        help=f"episodes (sampled replies) in the run (small: {RLConfig.from_preset('small').total_prompts})")
    parser.add_argument("--max-prompts", type=int, default=None,
                        help=f"distinct prompts to draw the episodes from (small: {PRESETS['small']['max_prompts']}); the teacher "
                             "answers only these")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"replies sampled per step, a multiple of --group-size (default: {RLConfig.batch_size})")
    parser.add_argument("--minibatch-size", type=int, default=None)
    parser.add_argument("--ppo-epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--kl-coef", type=float, default=None, help=f"beta, the KL penalty's weight (default: {RLConfig.kl_coef})")
    parser.add_argument("--kl-estimator", choices=KL_ESTIMATORS, default=None,
                        help=f"default: {RLConfig.kl_estimator}")
    parser.add_argument("--temperature", type=float, default=None, help=f"sampling temperature (default: {RLConfig.temperature:g})")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (0: off)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (1: off)")
    parser.add_argument("--warped-logprobs", action=argparse.BooleanOptionalAction, default=None,
                        help="ratio and KL from the distribution the replies were sampled from (temperature, top-k, "
                             "top-p; the default); --no-warped-logprobs: from the raw softmax at temperature 1, as "
                             "TRL 0.8.6 did (the paper preset)")
    parser.add_argument("--fixed-kl", action="store_true", help=f"keep beta fixed (default: adaptive, target {RLConfig.kl_target:g} nats)")
    parser.add_argument("--kl-target", type=float, default=None,
                        help=f"adaptive beta steers the KL per reply towards this (default: {RLConfig.kl_target:g} nats). A policy that "
                             "always says y has KL -log pi_ref(y): a collapse onto a reply the base model gives more "
                             "than e^-6 stays below 6, and beta falls; lower the target to hold the policy back")
    parser.add_argument("--kl-horizon", type=int, default=None,
                        help="H: each episode moves adaptive beta by a factor of at most 1 +- 0.2 / H, so it doubles "
                             f"or halves in no fewer than 3.5 H episodes (default: {RLConfig.kl_horizon}: over a 2,000-episode run beta "
                             "moves 4%% at most)")
    parser.add_argument("--normalize-reward", action="store_true", help="scale rewards by their running mean/std")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    options = RLConfig.options_given(args)
    if args.fixed_kl:
        options["adaptive_kl"] = False
    if args.normalize_reward:
        options["normalize_reward"] = True
    try:
        if args.resume and args.out is None:
            raise ValueError("--resume: name the run to continue with --out")
        out = Path(args.out or f"runs/ppo-{args.reward}")
        reward_models = args.reward_model[0] if len(args.reward_model) == 1 else args.reward_model
        given = RLInputs(init=args.init, reward=args.reward,
                         prompts=args.prompts or str(Path(args.data) / "prompts.txt"), teacher=args.teacher,
                         teacher_cache=args.teacher_cache or str(out.parent / "ppo-teacher.jsonl"),  # runs share it
                         reward_settings={"pmi_scorer": args.pmi_scorer, "pmi_k": args.pmi_k,
                                          "reward_model": reward_models, "ensemble": args.ensemble,
                                          "judge": args.judge, "teacher_dtype": args.teacher_dtype})
        summary = train(RunFolder(out, resume=args.resume), given, options, device=args.device)
    except USER_ERRORS as error:
        fail(error)
    if summary.get("interrupted"):
        return INTERRUPTED
    print_summary(out, summary)
    return 0


def clip_defaults() -> str:
    """`0.2 / 0.2; gspo 0.0003 / 0.0004, ...`: each algorithm's clip range, eps_low / eps_high."""
    return "; ".join([f"{DEFAULT_CLIP_EPS} / {DEFAULT_CLIP_EPS}"]
                     + [f"{name} {low:g} / {high:g}" for name, (low, high) in CLIP_RANGES.items()])


def print_summary(out: Path, summary: dict) -> None:
    if not summary:
        return
    reward, kl = summary["reward_mean"], summary["kl"]
    times = summary["seconds_per_step"]
    distinct = summary["distinct_frac"]
    print(f"{out}: {summary['steps']} steps; task reward {reward['start']:.3f} -> {reward['end']:.3f}, "
          f"KL {kl['start']:.2f} -> {kl['end']:.2f} nats/reply, distinct replies {distinct['start']:.2f} -> "
          f"{distinct['end']:.2f} of the batch (first -> last tenth of the steps); "
          f"seconds per step: rollout {times['rollout']:.2f}, reward {times['reward']:.2f}, "
          f"update {times['update']:.2f}")
    number = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731 (None: no finished reply to score)
    judged = [f"{name} {number(summary[key]['start'])} -> {number(summary[key]['end'])}"
              for key, name in (("reward_raw_mean", "training reward (raw)"), ("judge_mean", "held-out judge"),
                                ("generic_share", "generic share")) if key in summary]
    if judged:
        both = " (the training reward and the held-out judge on the same replies)" if "judge_mean" in summary else ""
        print(f"{out}: " + ", ".join(judged) + both)


if __name__ == "__main__":
    sys.exit(main())
