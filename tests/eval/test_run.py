"""`igpo eval` end to end on the tiny world (`world:test`, 12 questions): the real search proxy, the tiny
warm-started model, the hf engine in-process and the endpoint engine through `transformers serve`.

- a full run: outputs, the training rollouts' row layout, scores recounted from the rows, the setting;
- --beliefs: each row's log b_t equals one plain forward pass per belief point (tests/scoring/naive.py);
- interrupted with SIGINT after its first chunk (plus a torn last line), rerun: the same final scores;
- the endpoint engine: an endpoint that goes down midway is exit 2 with the finished chunks kept; rerun once it
  is back, its rollouts equal the in-process engine's token for token (greedy, same model);
- bad input: exit 2 with a message naming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from igpo_rlhf.eval.run import main as igpo_eval
from igpo_rlhf.models.loading import load_causal_lm, load_tokenizer
from igpo_rlhf.rewards import cover_exact_match, exact_match, f1_score
from igpo_rlhf.scoring.probe import alias_token_ids, probe_token_ids
from tests.eval.conftest import ROOT
from tests.scoring.naive import naive_belief
from tests.tiny_world import world_overrides

pytestmark = pytest.mark.slow

TRAJECTORY_KEYS = {"group_id", "sample_id", "question", "golds", "meta", "token_ids", "prompt_len", "turn_spans",
                   "obs_spans", "belief_points", "actions", "answer", "finish_reason", "n_searches",
                   "n_search_errors", "prompt_text", "turn_texts", "obs_texts"}  # fmt: skip
SCORE_KEYS = {"n", "em", "f1", "f1_igpo", "cover_em", "format_fail", "turns", "searches", "response_tokens"}


def sets(tiny, *extra: str) -> list[str]:
    world_dir, model_dir = tiny
    base = [f"model.path={model_dir}", *world_overrides(world_dir), "rollout.max_turns=3",
            "rollout.max_new_tokens=48", "rollout.max_prompt_tokens=300", "rollout.max_total_tokens=700",
            "rollout.max_observation_tokens=120", "rollout.search_top_k=2", "rollout.batch_size=8",
            "eval.chunk_size=3", f"search.proxy.corpus={world_dir / 'corpus.jsonl'}",
            'search.proxy.cache.mode="off"', f"search.proxy.cache.dir={world_dir.parent / 'eval-search-cache'}"]  # fmt: skip
    return [a for s in [*base, *extra] for a in ("--set", s)]


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tiny, tmp_path_factory):
    """One uninterrupted run, starting its own proxy from the config as `igpo train` does."""
    out = tmp_path_factory.mktemp("eval-full")
    assert (
        igpo_eval(
            ["-c", str(ROOT / "configs/demo.yaml"), *sets(tiny), "--data", "world:test", "--out", str(out)]
        )
        == 0
    )
    return out


def test_outputs_hold_scores_rows_and_setting(full, tiny):
    world_dir, model_dir = tiny
    scores = json.loads((full / "scores.json").read_text())
    rows = read_rows(full)
    assert len(rows) == 12 and {r["source"] for r in rows} == {"world:test"}
    tok = load_tokenizer(model_dir)
    for r in rows:
        assert TRAJECTORY_KEYS | {"source", "sample", "em", "f1", "f1_igpo", "cover_em"} <= set(r)
        assert r["turn_texts"] == [tok.decode(r["token_ids"][a:b]) for a, b in r["turn_spans"]]
        want = (0.0, 0.0, 0.0) if r["answer"] is None else (
            exact_match(r["answer"], r["golds"]), f1_score(r["answer"], r["golds"]),
            cover_exact_match(r["answer"], r["golds"]))  # fmt: skip
        assert (r["em"], r["f1"], r["cover_em"]) == want
    src = scores["sources"]["world:test"]
    assert set(src) >= SCORE_KEYS and src["n"] == 12
    assert src["f1"] == pytest.approx(sum(r["f1"] for r in rows) / 12)
    assert src["format_fail"] == pytest.approx(sum(r["answer"] is None for r in rows) / 12)
    assert src["turns"] == pytest.approx(sum(len(r["turn_spans"]) for r in rows) / 12)
    assert src["response_tokens"] == pytest.approx(sum(b - a for r in rows for a, b in r["turn_spans"]) / 12)
    assert scores["avg"]["f1"] == src["f1"]  # one source: its own average
    assert all(0 <= src[k] <= 1 for k in ("em", "f1", "f1_igpo", "cover_em", "format_fail"))
    setting = scores["setting"]
    corpus_lines = sum(1 for line in (world_dir / "corpus.jsonl").read_text().splitlines() if line.strip())
    assert setting["search"]["passages"] == corpus_lines and setting["search"]["backend"] == "bm25"
    assert setting["search"]["top_k"] == 2 and setting["max_turns"] == 3
    assert setting["sampling"]["temperature"] == 0.0 and setting["engine"]["name"] == "hf"
    assert len(setting["model"]["hash"]) == 16 and len(setting["project"]["commit"]) == 40
    assert f"{100 * src['f1']:.1f}" in (full / "table.md").read_text()


def test_beliefs_equal_one_plain_forward_per_belief_point(tiny, tmp_path):
    _, model_dir = tiny
    argv = [
        "-c",
        str(ROOT / "configs/demo.yaml"),
        *sets(tiny),
        "--data",
        "world:test",
        "--limit-per-source",
        "3",
    ]
    assert igpo_eval([*argv, "--beliefs", "--out", str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    probe = probe_token_ids(tok, "<answer>")
    for r in rows:
        assert len(r["beliefs"]) == len(r["belief_points"])
        for p, got in zip(r["belief_points"], r["beliefs"], strict=True):
            want = max(
                naive_belief(model, r["token_ids"], p, probe, a)
                for a in alias_token_ids(tok, "<answer>", r["golds"])
            )
            assert got == pytest.approx(want, abs=1e-4)
    curve = json.loads((tmp_path / "scores.json").read_text())["beliefs"]["world:test"]
    assert curve[0]["n"] == 3
    assert curve[0]["mean_log_b"] == pytest.approx(sum(r["beliefs"][0] for r in rows) / 3)


def test_interrupted_run_continues_to_the_same_scores(full, tiny, proxy, tmp_path):
    """SIGINT once the first chunk is written, a torn line appended (a kill during a write), rerun.

    The signal cannot be timed from outside: on a loaded machine the last chunks may be written before it
    lands (seen: all 4 chunks written, then interrupted while scoring). Such an attempt is made again in a
    fresh directory, up to 3 times, so that the rerun below has chunks left to roll out."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for attempt in range(3):
        out = tmp_path / f"attempt{attempt}"
        argv = ["-c", str(ROOT / "configs/demo.yaml"), *sets(tiny), "--data", "world:test", "--out", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "igpo_rlhf.cli", "eval", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        rollouts = out / "rollouts.jsonl"
        while proc.poll() is None and not (rollouts.is_file() and rollouts.read_text().count("\n") >= 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
        done = rollouts.read_text().count("\n")
        if proc.returncode != 0 and done < 12:
            break
    else:
        pytest.skip(f"3 runs finished their chunks before the signal landed; the last said:\n{output}")
    assert proc.returncode == 130, output
    assert "finished chunks are kept" in output and done % 3 == 0 and 3 <= done < 12
    with rollouts.open("a") as f:
        f.write('{"group_id": 0, "sample_id": 0, "quest')
    assert igpo_eval(argv) == 0
    assert (
        json.loads((out / "scores.json").read_text())["sources"]
        == json.loads((full / "scores.json").read_text())["sources"]
    )
    assert [r["token_ids"] for r in read_rows(out)] == [r["token_ids"] for r in read_rows(full)]


class _Forward(BaseHTTPRequestHandler):
    """Forwards POSTs to `target`, or answers 503 once `budget` forwards are spent: an endpoint that goes
    down midway (transformers serve cannot be told to fail on demand)."""

    target = ""
    budget = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            ok = type(self).budget > 0
            type(self).budget -= ok
        if ok:
            answer = httpx.post(self.target + self.path.removeprefix("/v1"), content=body, timeout=120,
                                headers={"Content-Type": "application/json"})  # fmt: skip
            code, data = answer.status_code, answer.content
        else:
            code, data = 503, b'{"error": "down"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_down_midway_keeps_chunks_and_the_rerun_equals_the_in_process_engine(tiny, proxy, served, tmp_path,
                                                                                      capsys):  # fmt: skip
    url, _ = served
    common = ["-c", str(ROOT / "configs/demo.yaml"), "--data", "world:test"]
    hf_out, api_out = tmp_path / "hf", tmp_path / "api"
    # one row per engine call on both sides, so no padding differs between the two engines
    assert (
        igpo_eval(
            [*common, *sets(tiny, f"search.url={proxy.url}", "rollout.batch_size=1"), "--out", str(hf_out)]
        )
        == 0
    )

    _Forward.target, _Forward.budget = url, 9  # 3 questions x <= 3 turns: the first chunk always completes
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = sets(tiny, f"search.url={proxy.url}", "rollout.engine=openai",
               f"rollout.openai.base_url=http://127.0.0.1:{server.server_address[1]}/v1",
               "rollout.openai.retries=1", "rollout.openai.backoff_s=0", "rollout.openai.concurrency=4")  # fmt: skip
    try:
        capsys.readouterr()
        assert igpo_eval([*common, *api, "--out", str(api_out)]) == 2
        err = capsys.readouterr().err
        assert f"127.0.0.1:{server.server_address[1]}/v1/completions failed after 2 attempts" in err
        assert "finished chunks are kept" in err
        kept = read_rows(api_out)
        assert len(kept) % 3 == 0 and 3 <= len(kept) < 12
        _Forward.budget = 10**9  # the endpoint is back
        assert igpo_eval([*common, *api, "--out", str(api_out)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert [r["token_ids"] for r in read_rows(api_out)] == [r["token_ids"] for r in read_rows(hf_out)]
    api_scores = json.loads((api_out / "scores.json").read_text())
    assert api_scores["sources"] == json.loads((hf_out / "scores.json").read_text())["sources"]
    assert api_scores["setting"]["engine"]["name"] == "openai"


def test_a_rerun_with_another_setting_is_refused(full, tiny, capsys):
    argv = ["-c", str(ROOT / "configs/demo.yaml"), *sets(tiny, "rollout.max_turns=2"), "--data", "world:test"]
    assert igpo_eval([*argv, "--out", str(full)]) == 2
    assert "holds an evaluation with another setting" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "world:test", "--sources", "nq"], "unknown source(s) 'nq'; the data holds: world:test"),
        (["--data", "world:test", "--model", "/no/such/model"], "model.path (--model)='/no/such/model'"),
        (["--data", "{nogold}"], "row 0"),
        (["--data", "world:test", "--n-samples", "4"], "eval.temperature > 0"),
        (
            [
                "--data",
                "world:test",
                "--set",
                "rollout.engine=openai",
                "--set",
                "rollout.openai.api_key_env=IGPO_UNSET_KEY",
            ],
            "IGPO_UNSET_KEY",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_exit_2_naming_it(tiny, proxy, tmp_path, capsys, extra, message):
    nogold = tmp_path / "nogold.jsonl"
    nogold.write_text('{"id": "a", "question": "Who?", "answers": []}\n')
    extra = [str(nogold) if e == "{nogold}" else e for e in extra]
    argv = ["-c", str(ROOT / "configs/demo.yaml"), *sets(tiny, f"search.url={proxy.url}"), *extra]
    assert igpo_eval([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if extra[1] == str(nogold):
        assert str(nogold) in err
