"""Benchmark the belief scorer: one pass vs naive per-point passes, and vs the plain forward PPO pays anyway.

    python bench/scorer.py                                   # CPU float32, the issue's sizes
    python bench/scorer.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8   # on a GPU

Model: a random Qwen2 (or Llama) built from a config (no download). Batch: `--batch` trajectories of length L each,
K belief points evenly spaced with the last at the end (p_k = round(k L / K), k = 1..K), one gold alias of
`--answer-len` tokens, a probe of `--probe-len` tokens. Methods, timed side by side in one run (median of
`--repeats` interleaved rounds after a warm-up round; on CPU the clock is this process's CPU time, so that other
processes on a shared machine do not distort the ratios; run it with --threads 1 for that to be compute time):

- naive_ref: per belief point, one forward over ids[:p] + probe + answer for the whole batch, full logits and
  log-softmax over every position (the reference code's way);
- naive: the same passes made as cheap as they get (logits only for the answer positions);
- ours_beliefs: `score_beliefs` (trajectory pass without logits + one probe pass);
- plain: one forward over the trajectories and the log-probs of their tokens (the old log-probs PPO computes);
- ours_full: `score_trajectories`, beliefs and those token log-probs from one pass.

Peak memory: each method once in a fresh subprocess. CPU (Linux): the peak RSS is reset just before the call
(/proc/self/clear_refs) and read after it (VmHWM), minus the RSS before; it counts allocator slack too. CUDA:
torch.cuda.max_memory_allocated minus the allocation before the call.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from igpo_rlhf.scoring import score_beliefs, score_trajectories  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
METHODS = ("naive_ref", "naive", "ours_beliefs", "plain", "ours_full")


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
    }[args.family]
    config = config_class(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2 * max(args.lengths),
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return model_class(config).to(device=args.device, dtype=DTYPES[args.dtype]).eval()


def make_batch(args: argparse.Namespace, length: int, n_points: int) -> dict:
    generator = torch.Generator().manual_seed(length)
    ids = torch.randint(0, args.vocab, (args.batch, length), generator=generator)
    points = [round(k * length / n_points) for k in range(1, n_points + 1)]
    return {
        "sequences": ids.tolist(),
        "belief_points": [points] * args.batch,
        "probe_ids": list(range(10, 10 + args.probe_len)),
        "answers": [[torch.randint(0, args.vocab, (args.answer_len,), generator=generator).tolist()]]
        * args.batch,
    }


@torch.inference_mode()
def naive(model, batch: dict, all_logits: bool = False) -> list[list[float]]:
    """One forward per belief point over ids[:p] + probe + answer (all rows at once: they share p).

    all_logits: as the reference code, logits and log-softmax at every position; else only where they predict
    the answer."""
    answer = batch["answers"][0][0]
    n = len(answer)
    device = model.device
    beliefs = [[] for _ in batch["sequences"]]
    for p in batch["belief_points"][0]:
        tokens = torch.tensor(
            [ids[:p] + batch["probe_ids"] + answer for ids in batch["sequences"]], device=device
        )
        if all_logits:
            log_probs = model(tokens).logits.float().log_softmax(-1)[:, -n - 1 : -1]  # [B, A, V]
        else:
            log_probs = (
                model(tokens, logits_to_keep=n + 1).logits[:, :-1].float().log_softmax(-1)
            )  # [B, A, V]
        log_probs = log_probs.gather(-1, tokens[:, -n:, None]).squeeze(-1)  # [B, A] log π(a_j | ...)
        for row, value in enumerate(log_probs.mean(-1).tolist()):
            beliefs[row].append(value)
    return beliefs


@torch.inference_mode()
def plain(model, batch: dict) -> torch.Tensor:
    """The floor: one forward over the trajectories, log-probs of their own tokens [B, L - 1]."""
    tokens = torch.tensor(batch["sequences"], device=model.device)
    logits = model(tokens).logits[:, :-1].float()  # [B, L - 1, V]
    return logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


def run(method: str, model, batch: dict, token_budget: int):
    if method == "naive_ref":
        return naive(model, batch, all_logits=True)
    if method == "naive":
        return naive(model, batch)
    if method == "plain":
        return plain(model, batch)
    if method == "ours_beliefs":
        return score_beliefs(model, **batch, token_budget=token_budget)
    return score_trajectories(model, **batch, token_budget=token_budget)


def timed(method: str, model, batch: dict, args: argparse.Namespace) -> float:
    """Seconds of one call: the process's CPU time (--clock cpu) or wall time, CUDA synchronised."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    start = clock()
    run(method, model, batch, args.token_budget)
    sync()
    return clock() - start


def time_side_by_side(methods, model, batch: dict, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per method over args.repeats rounds; each round runs every method once, in turn."""
    for method in methods:  # warm-up round
        run(method, model, batch, args.token_budget)
    seconds = {method: [] for method in methods}
    for _ in range(args.repeats):
        for method in methods:
            seconds[method].append(timed(method, model, batch, args))
    return {method: statistics.median(values) for method, values in seconds.items()}


def peak_memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: bytes a single call of args.memory_of adds at its peak; printed as JSON."""
    model = build_model(args)
    batch = make_batch(args, args.lengths[0], args.points)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(args.memory_of, model, batch, args.token_budget)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS. (getrusage's ru_maxrss
        # cannot be used: it survives fork + exec, so a child would report its parent's peak.)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        run(args.memory_of, model, batch, args.token_budget)
        peak = (_status_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_bytes": peak}))


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(method: str, length: int) -> int:
    command = [sys.executable, __file__, *sys.argv[1:], "--memory-of", method, "--lengths", str(length)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["qwen2", "llama"], default="qwen2")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[1024, 2048, 4096], help="trajectory lengths L"
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--points", type=int, default=5, help="belief points per trajectory")
    parser.add_argument(
        "--sweep-points", type=int, nargs="*", default=[1, 2, 5, 10, 20], help="at the middle L"
    )
    parser.add_argument("--answer-len", type=int, default=8)
    parser.add_argument("--probe-len", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="cpu: this process's CPU time (default on CPU: other processes on a shared machine do not count; "
        "use with --threads 1); wall: elapsed time (default on CUDA)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-of", choices=METHODS, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" else "wall"
    if args.memory_of:
        peak_memory_child(args)
        return

    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# {args.family}: {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, "
        f"vocab {args.vocab} ({n_params / 1e6:.1f}M params), {args.dtype} on {args.device}, "
        f"{torch.get_num_threads()} CPU threads; batch {args.batch}, answer {args.answer_len} tokens, "
        f"probe {args.probe_len} tokens; {args.clock} time, median of {args.repeats}"
    )
    print(f"# command: python bench/scorer.py {' '.join(sys.argv[1:])}\n")

    tables = {"time": [], "memory": []}
    for length in args.lengths:
        batch = make_batch(args, length, args.points)
        seconds = time_side_by_side(METHODS, model, batch, args)
        ours = score_beliefs(model, **batch, token_budget=args.token_budget)
        gap = max(
            abs(a - b)
            for ra, rb in zip(ours, naive(model, batch), strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        tables["time"].append(
            f"| {length} | {' | '.join(f'{seconds[m]:.3f}' for m in METHODS)} | "
            f"**{seconds['naive_ref'] / seconds['ours_beliefs']:.2f}x** | "
            f"**{seconds['naive'] / seconds['ours_beliefs']:.2f}x** | "
            f"**{seconds['ours_full'] / seconds['plain']:.3f}x** | {gap:.1e} |"
        )
        print(tables["time"][-1], flush=True)
        if not args.no_memory:
            peaks = [peak_memory(m, length) / 2**20 for m in METHODS]
            tables["memory"].append(f"| {length} | {' | '.join(f'{p:.0f}' for p in peaks)} |")
            print(tables["memory"][-1], flush=True)

    print(f"\n## {args.points} belief points: median seconds and ratios\n")
    print(
        f"| L | {' | '.join(METHODS)} | naive_ref / ours_beliefs | naive / ours_beliefs | ours_full / plain "
        "| max abs(ours - naive) |"
    )
    print("|---" * (len(METHODS) + 5) + "|")
    print("\n".join(tables["time"]))
    if tables["memory"]:
        print(f"\n## {args.points} belief points: peak memory of one call (MiB)\n")
        print(f"| L | {' | '.join(METHODS)} |")
        print("|---" * (len(METHODS) + 1) + "|")
        print("\n".join(tables["memory"]))

    if args.sweep_points:
        length = args.lengths[len(args.lengths) // 2]
        print(f"\n## As the number of belief points K grows (L = {length}): median seconds and ratios\n")
        print(
            f"| K | {' | '.join(METHODS)} | naive_ref / ours_beliefs | naive / ours_beliefs | ours_full / plain |"
        )
        print("|---" * (len(METHODS) + 4) + "|")
        for n_points in args.sweep_points:
            seconds = time_side_by_side(METHODS, model, make_batch(args, length, n_points), args)
            print(
                f"| {n_points} | {' | '.join(f'{seconds[m]:.3f}' for m in METHODS)} | "
                f"{seconds['naive_ref'] / seconds['ours_beliefs']:.2f}x | "
                f"{seconds['naive'] / seconds['ours_beliefs']:.2f}x | {seconds['ours_full'] / seconds['plain']:.3f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
