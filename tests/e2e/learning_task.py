"""A small RL task with a known optimum, to prove that the real trainer's gradient is right: search or guess.

Eight invented items, each with a code word stated in one corpus passage ("The code of Vorlim is quartz.").
The question "What is the code of Vorlim?" has the code as its gold answer. The warm start, built here in a
few seconds, is a coin flip at the first generated token: half of its demonstrations search
(`<search> Vorlim code </search>`, then answer the code the passage shows) and half answer at once with
`<answer> unknown </answer>`. So the initial policy scores F1 ≈ 0.5, and the optimum is known: always
search, F1 = 1. RL can only get there by raising the probability of the first token of the first turn
(`<search>` rather than `<answer>`), which makes the task sensitive to exactly the faults that break policy
gradients: an advantage of the wrong sign drives it to always guess, an action mask shifted one token later
never trains the deciding token, and old log-probs read at the wrong positions break the on-policy ratio.

    python -m tests.e2e.learning_task OUT    # build the task (model, questions, corpus) into OUT and train
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

ITEMS = {
    "Vorlim": "quartz", "Kastren": "falcon", "Belmora": "ember", "Tiradon": "willow",
    "Quessel": "copper", "Morvane": "harbor", "Dellsar": "lantern", "Pirrow": "meadow",
}  # fmt: skip
PROMPT = "Question: {question}\n"
GUESS = "unknown"


@dataclass
class Task:
    model_dir: Path
    questions: Path
    corpus: Path


def build_task(out: Path, *, seed: int = 0, sft_steps: int = 800) -> Task:
    """Questions, corpus and the coin-flip warm-started tiny model, written under `out`."""
    import torch

    from igpo_rlhf.config import RolloutConfig
    from igpo_rlhf.rollout.protocols import make_protocol
    from igpo_rlhf.sft.demos import BM25Search
    from igpo_rlhf.sft.loop import supervised_train
    from igpo_rlhf.world.tiny_model import TinyModelOptions, build_model, train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    corpus = []
    for k, (name, code) in enumerate(ITEMS.items()):
        text = f"The code of {name} is {code}."
        corpus.append({"id": str(k), "title": name, "text": text, "contents": f'"{name}"\n{text}'})
    questions = [
        {"id": f"q{k}", "question": f"What is the code of {name}?", "answers": [code]}
        for k, (name, code) in enumerate(ITEMS.items())
    ]
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (out / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")

    rollout = RolloutConfig(prompt_template=PROMPT, search_top_k=1, max_observation_tokens=64)
    text_protocol = make_protocol(rollout, None, "<answer>")
    search = BM25Search(corpus)
    demos = []  # (question, turns with their observations): half search first, half guess first
    for k in range(len(questions) * 8):
        q = questions[k % len(questions)]
        name = q["question"].removeprefix("What is the code of ").removesuffix("?")
        if (k // len(questions)) % 2 == 0:  # every question: half its demonstrations search, half guess
            query = f"{name} code"
            hits = search.search([query], 1)[0]
            demos.append(
                (
                    q["question"],
                    [
                        (f"<search> {query} </search>", (hits, query)),
                        (f"<answer> {q['answers'][0]} </answer>", None),
                    ],
                )
            )
        else:
            demos.append((q["question"], [(f"<answer> {GUESS} </answer>", None)]))
    texts = [c["text"] for c in corpus] + [text_protocol.prompt_text(q) for q, _ in demos]
    texts += [
        text_protocol.observation_text([h], queries=[qq])
        for _, turns in demos
        for _, o in turns
        if o
        for h, qq in [o]
    ]
    texts += [t for _, turns in demos for t, _ in turns]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    protocol = make_protocol(rollout, tokenizer, "<answer>")
    examples = []
    for question, turns in demos:  # token segments exactly as the rollout loop appends them
        ids = protocol.prompt_ids(question)
        labels = [-100] * len(ids)
        for turn, obs in turns:
            part = tokenizer.encode(turn, add_special_tokens=False)
            ids, labels = ids + part, labels + part
            if obs is not None:
                hits, query = obs
                part = protocol.observation_ids(
                    [hits], max_tokens=rollout.max_observation_tokens, queries=[query]
                )
                ids, labels = ids + part, labels + [-100] * len(part)
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
        examples.append((ids, labels))
    opts = TinyModelOptions(hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128, seed=seed)
    model = build_model(len(tokenizer), opts, tokenizer.eos_token_id)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        supervised_train(model, examples, steps=sft_steps, batch_size=8, lr=3e-3, warmup=10, seed=seed,
                         pad_id=tokenizer.pad_token_id, log_every=sft_steps)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return Task(out / "model", out / "questions.jsonl", out / "corpus.jsonl")


def task_overrides(task: Task, run_dir: Path) -> list[str]:
    """Config overrides of a training run on the task: 4 prompts x 8 rollouts per step, up to 2 turns."""
    return [
        f"model.path={task.model_dir}",
        f"data.train=[{task.questions}]",
        f"search.proxy.corpus={task.corpus}",
        f"rollout.prompt_template={json.dumps(PROMPT)}",
        "rollout.n_samples=8",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=16",
        "rollout.max_prompt_tokens=64",
        "rollout.max_total_tokens=256",
        "rollout.max_observation_tokens=64",
        "rollout.search_top_k=1",
        "rollout.batch_size=32",
        "train.prompts_per_step=4",
        "train.micro_batch_size=32",
        "train.lr=5e-4",
        "train.on_collapse=ignore",  # the test judges the run by its numbers, not by the collapse guard
        "train.seed=0",
        *[
            f"resources.{role}.num_cpus=0.2"
            for role in ("rollout", "policy", "reference", "critic", "scorer")
        ],
        f"logging.run_dir={run_dir}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "checkpoint.every_n_steps=1000",
    ]


if __name__ == "__main__":
    from igpo_rlhf.ray.train import main as train_main

    root = Path(sys.argv[1])
    task = build_task(root / "task")
    sys.exit(
        train_main(
            [
                "-c",
                "configs/demo.yaml",
                "--overwrite",
                *[a for o in task_overrides(task, root / "run") + sys.argv[2:] for a in ("--set", o)],
            ]
        )
    )
