"""The viewer's JSON API against live servers (real uvicorn on 127.0.0.1) over a real 2-step training run:
every number is compared with the rollouts and metrics files, the credit with the formulas computed here
(expected.py); bad requests, read-only, token auth, an eval directory."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from igpo_rlhf.viewer.app import main as view_main
from tests.viewer.conftest import SNAPSHOTS, broken_copy, make_eval_dir
from tests.viewer.expected import group_expectations, read_jsonl, snapshot

pytestmark = pytest.mark.slow


def step_rows(run: Path, step: int) -> list[dict]:
    return read_jsonl(run / "rollouts" / f"step_{step:05d}.jsonl")


def get(base: str, path: str, **params) -> dict:
    resp = httpx.get(base + path, params=params, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_info_and_metrics_are_the_files(viewer, trained_run):
    info = get(viewer.url, "/api/info")
    assert (info["kind"], info["name"]) == ("run", trained_run.name)
    assert [p["key"] for p in info["parts"]] == ["1", "2"] and info["default_part"] == "2"
    algorithm = yaml.safe_load((trained_run / "config.yaml").read_text())["algorithm"]
    assert {k: info["settings"][k] for k in ("estimator", "ig_kind", "norm", "gamma", "adv_eps")} == {
        k: algorithm[k] for k in ("estimator", "ig_kind", "norm", "gamma", "adv_eps")
    }
    logged = read_jsonl(trained_run / "metrics.jsonl")
    metrics = get(viewer.url, "/api/metrics")
    assert metrics["steps"] == [m["step"] for m in logged] == [1, 2]
    for name in ("reward/f1", "ig/mean", "ig/positive_frac", "policy/kl", "policy/entropy", "time/step"):
        assert metrics["series"][name] == [m[name] for m in logged]
    assert metrics["problems"] == []


def test_list_filters_sort_and_pages_match_the_files(viewer, trained_run):
    rows = {step: step_rows(trained_run, step) for step in (1, 2)}
    for step, file_rows in rows.items():
        page = get(viewer.url, "/api/trajectories", part=step, per_page=500)["page"]
        assert page["total"] == len(file_rows) and [r["index"] for r in page["rows"]] == list(
            range(len(file_rows))
        )
        assert [r["turns"] for r in page["rows"]] == [len(r["turn_spans"]) for r in file_rows]
        assert [r["log_beliefs"] for r in page["rows"]] == [r["beliefs"] for r in file_rows]
    both = rows[1] + rows[2]
    everything = get(viewer.url, "/api/trajectories", part="all", per_page=500)["page"]
    assert everything["total"] == len(both) == 16

    def listed(**params) -> list[tuple[int, int]]:
        page = get(viewer.url, "/api/trajectories", part="all", per_page=500, **params)["page"]
        return [(r["step"], r["index"]) for r in page["rows"]]

    def expected(keep) -> list[tuple[int, int]]:
        return [(step, k) for step in (1, 2) for k, r in enumerate(rows[step]) if keep(r)]

    for reason in {r["finish_reason"] for r in both}:
        assert listed(finish=reason) == expected(lambda r, reason=reason: r["finish_reason"] == reason)
    for turns in {len(r["turn_spans"]) for r in both}:
        assert listed(turns=turns) == expected(lambda r, turns=turns: len(r["turn_spans"]) == turns)
    assert listed(searches=0) == expected(lambda r: r["n_searches"] == 0)
    assert listed(outcome="no_answer") == expected(lambda r: r["answer"] is None)
    word = rows[1][0]["question"].split()[-1].upper()  # case-insensitive substring of the question
    assert listed(q=word) == expected(lambda r: word.casefold() in r["question"].casefold())
    by_reward = get(viewer.url, "/api/trajectories", part=2, sort="reward", order="asc", per_page=500)["page"]
    assert [r["reward"] for r in by_reward["rows"]] == sorted(r["outcome_reward"] for r in rows[2])
    page2 = get(viewer.url, "/api/trajectories", part=1, per_page=3, page=2)["page"]
    assert [r["index"] for r in page2["rows"]] == [3, 4, 5] and page2["pages"] == 3


def test_trajectory_and_group_credit_equal_the_formulas(viewer, trained_run):
    for step in (1, 2):
        rows = step_rows(trained_run, step)
        want = group_expectations(rows)
        for k, row in enumerate(rows):
            d = get(viewer.url, f"/api/trajectory/{step}/{k}")
            e = want[((None, row["group_id"]), row["sample_id"])]
            T = len(row["turn_spans"])
            assert len(d["turns"]) == T and d["log_beliefs"] == row["beliefs"]
            assert d["check"]["status"] == "match", d["check"]
            for t, turn in enumerate(d["turns"]):
                assert turn["log_b_before"] == row["beliefs"][t]
                assert turn["log_b_after"] == (row["beliefs"][t + 1] if t + 1 < T else None)
                assert turn["advantage"] == row["turn_advantages"][t]  # what the trainer used, as stored
                assert turn["reward"] == pytest.approx(e["rewards"][t], abs=1e-12)
                assert turn["normalized"] == pytest.approx(e["normalized"][t], abs=1e-9)
                assert turn["advantage_igpo"] == pytest.approx(e["igpo"][t], abs=1e-9)
                assert turn["advantage_grpo"] == pytest.approx(e["grpo"][t], abs=1e-9)
                assert (
                    turn["queries"] == row["actions"][t]["queries"]
                    and turn["kind"] == row["actions"][t]["kind"]
                )
        for gid in sorted({r["group_id"] for r in rows}):
            g = get(viewer.url, f"/api/group/{step}/{gid}")
            members = [r for r in rows if r["group_id"] == gid]
            assert [r["sample_id"] for r in g["rollouts"]] == [r["sample_id"] for r in members]
            for r, m in zip(g["rollouts"], members, strict=True):
                e = want[((None, gid), m["sample_id"])]
                assert r["igpo"] == pytest.approx(e["igpo"], abs=1e-9)
                assert r["grpo"] == pytest.approx(e["grpo"], abs=1e-9)
                assert r["stored"] == m["turn_advantages"]


def test_token_view_marks_trained_and_observation_tokens(viewer, trained_run):
    rows = step_rows(trained_run, 1)
    k = max(range(len(rows)), key=lambda i: len(rows[i]["turn_spans"]))
    row = rows[k]
    tv = get(viewer.url, f"/api/trajectory/1/{k}/tokens")
    assert tv["source"] == "tokenizer" and tv["ids"] == row["token_ids"]
    want = ["p"] * len(row["token_ids"])
    for a, b in row["turn_spans"]:
        want[a:b] = ["a"] * (b - a)
    for a, b in row["obs_spans"]:
        want[a:b] = ["o"] * (b - a)
    assert tv["kinds"] == want
    assert tv["counts"] == {"p": row["prompt_len"], "a": want.count("a"), "o": want.count("o"), "x": 0}
    for (a, b), text in zip(row["turn_spans"], row["turn_texts"], strict=True):
        assert "".join(tv["pieces"][a:b]) == text  # decoded with the run's own tokenizer


def test_bad_requests_get_clear_errors_and_nothing_is_written(viewer, trained_run):
    resp = httpx.get(viewer.url + "/api/trajectories", params={"sort": "bogus"})
    assert (
        resp.status_code == 422 and "sort='bogus'; accepted: order, reward, f1, ig" in resp.json()["detail"]
    )
    resp = httpx.get(viewer.url + "/api/trajectories", params={"part": "9"})
    assert (
        resp.status_code == 404
        and "no rollouts file '9'" in resp.json()["detail"]
        and "steps: 1, 2" in resp.text
    )
    resp = httpx.get(viewer.url + "/api/trajectory/1/999")
    assert resp.status_code == 404 and "has no line 1000" in resp.json()["detail"]
    resp = httpx.get(viewer.url + "/api/group/1/77")
    assert resp.status_code == 404 and "no group '77'" in resp.json()["detail"]
    assert httpx.post(viewer.url + "/api/info").status_code == 405  # read-only: GET only
    assert httpx.get(viewer.url + "/trajectory/1/0").headers["content-type"].startswith("text/html")
    for step in (1, 2):  # every page's data, then the run directory is byte for byte what training left
        for k, row in enumerate(step_rows(trained_run, step)):
            get(viewer.url, f"/api/trajectory/{step}/{k}")
            get(viewer.url, f"/api/trajectory/{step}/{k}/tokens")
            get(viewer.url, f"/api/group/{step}/{row['group_id']}")
    assert snapshot(trained_run) == SNAPSHOTS[trained_run]


def test_token_auth_and_refusing_other_interfaces(serve, trained_run, capsys, monkeypatch):
    monkeypatch.delenv("IGPO_VIEW_TOKEN", raising=False)
    assert view_main([str(trained_run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 is not a loopback address" in err and "IGPO_VIEW_TOKEN" in err
    assert view_main([str(trained_run.parent / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    server = serve(trained_run, token="s3cret")
    for path in ("/", "/api/info", "/static/app.js", "/api/trajectory/1/0"):
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(server.url + path, params={"token": "s3cret"}).status_code == 200
    page = httpx.get(server.url + "/", params={"token": "s3cret"}).text
    assert '/static/app.js?token=s3cret"' in page  # the page's own assets carry the token


def test_eval_directory_scores_rollouts_and_groups(serve, trained_run, tmp_path):
    out = make_eval_dir(trained_run, tmp_path / "eval")
    rows = read_jsonl(out / "rollouts.jsonl")
    server = serve(out)
    info = get(server.url, "/api/info")
    assert info["kind"] == "eval" and [p["key"] for p in info["parts"]] == ["eval"]
    assert info["scores"]["sources"]["nq"]["n"] == sum(r["source"] == "nq" for r in rows)
    page = get(server.url, "/api/trajectories", source="hotpotqa", per_page=500)["page"]
    assert [r["index"] for r in page["rows"]] == [k for k, r in enumerate(rows) if r["source"] == "hotpotqa"]
    assert page["facets"]["sources"] == {"hotpotqa": 8, "nq": 8}
    # group ids restart in every chunk: the group of row 9 (chunk 1, group 0) is the 4 rollouts of its chunk
    d = get(server.url, "/api/trajectory/eval/9")
    assert d["group"] == "1-0" and [s["index"] for s in d["siblings"]] == [8, 9, 10, 11]
    assert d["source"] == rows[9]["source"] and len(d["turns"]) == len(rows[9]["turn_spans"])
    assert d["check"]["status"] == "not_checked"  # an eval stores no advantages
    want = group_expectations(rows)[((1, 0), rows[9]["sample_id"])]
    assert [t["advantage_igpo"] for t in d["turns"]] == pytest.approx(want["igpo"], abs=1e-9)
    tv = get(server.url, "/api/trajectory/eval/9/tokens")  # the model is not here: the stored texts
    assert tv["source"] == "segments" and "/not/here" in tv["note"]
    assert tv["pieces"][0] == rows[9]["prompt_text"]


def test_malformed_rollouts_are_reported_not_fatal(serve, trained_run, tmp_path):
    run = broken_copy(trained_run, tmp_path / "run")
    good = step_rows(trained_run, 2)
    server = serve(run)
    data = get(server.url, "/api/trajectories", part=2, per_page=500)
    assert data["page"]["total"] == len(good)
    problems = {p["line"]: p["message"] for p in data["problems"]}
    n = len(good)
    assert sorted(problems) == [n + 1, n + 2, n + 3]
    assert problems[n + 1].startswith("not a JSON object")
    assert "missing keys turn_spans" in problems[n + 2]
    assert problems[n + 3].startswith("truncated")
    assert get(server.url, "/api/metrics")["problems"][0]["line"] == 3
    assert get(server.url, "/api/trajectory/2/0")["turns"]  # the good rows still open
    resp = httpx.get(server.url + f"/api/trajectory/2/{n + 1}")
    assert resp.status_code == 422 and "row missing keys turn_spans" in resp.json()["detail"]


def test_a_row_of_the_wrong_shape_is_an_error_message(serve, trained_run, tmp_path):
    run = tmp_path / "run"
    (run / "rollouts").mkdir(parents=True)
    rows = step_rows(trained_run, 1)
    rows[0]["turn_spans"] = "oops"  # listed (it has the keys) but no page can be drawn from it
    (run / "rollouts" / "step_00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = serve(run)
    assert get(server.url, "/api/trajectories", part=1)["page"]["total"] == len(rows)
    resp = httpx.get(server.url + "/api/trajectory/1/0")
    assert resp.status_code == 422
    assert "step_00001.jsonl line 1: a value of the wrong type or shape" in resp.json()["detail"]
    assert get(server.url, "/api/trajectory/1/1")["turns"]
