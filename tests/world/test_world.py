"""The built-in world: determinism, answers re-derived from the corpus text, demonstrations that retrieve.

Answers are checked by an independent reader: regular expressions over the corpus sentences build a fact
table, and each question's chain is walked through it from the entity named in the question.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import bm25s
import pytest

from igpo_rlhf.config import RolloutConfig, WorldConfig
from igpo_rlhf.rollout.protocols import make_protocol
from igpo_rlhf.sft.demos import render_demo
from igpo_rlhf.world.world import build_world, main, world_is_built
from services.search_proxy.client import SearchClient
from services.search_proxy.launch import start_proxy
from services.search_proxy.settings import CacheSettings, ProxySettings

SMALL = WorldConfig(seed=5, n_people=24, n_train=30, n_test=12, n_demos=24, max_hops=3)

# the corpus sentences, read back independently of the generator
FACT_PATTERNS = {
    ("born_in", "birth_year"): re.compile(r"^(?P<x>.+) was born in (?P<y1>.+) in (?P<y2>\d{4})\.$"),
    ("employer",): re.compile(r"^(?P<x>.+) works for (?P<y>.+) as an? \w+\.$"),
    ("spouse",): re.compile(r"^(?P<x>.+) is married to (?P<y>.+)\.$"),
    ("founder", "founded_year"): re.compile(r"^(?P<x>.+) was founded by (?P<y1>.+) in (?P<y2>\d{4})\.$"),
    ("based_in",): re.compile(r"^(?P<x>.+) is based in (?P<y>.+)\. It makes \w+\.$"),
    ("country",): re.compile(r"^(?P<x>.+) is a city in the (?P<y>.+)\.$"),
}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _facts(corpus: list[dict]) -> dict[tuple[str, str], tuple[str, str]]:
    """(relation, subject) → (object, passage id), from the corpus text alone."""
    facts = {}
    for row in corpus:
        for relations, pattern in FACT_PATTERNS.items():
            m = pattern.match(row["text"])
            if not m:
                continue
            objects = [m["y"]] if len(relations) == 1 else [m["y1"], m["y2"]]
            for rel, obj in zip(relations, objects, strict=True):
                assert (rel, m["x"]) not in facts, f"two passages state {rel} of {m['x']}"
                facts[rel, m["x"]] = (obj, row["id"])
            break
    return facts


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(out, SMALL, search_top_k=3)
    return out


def test_same_seed_gives_byte_identical_files(world_dir, tmp_path):
    again = tmp_path / "again"
    build_world(again, SMALL, search_top_k=3)
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl", "demos.jsonl", "world.json"):
        assert (again / name).read_bytes() == (world_dir / name).read_bytes(), name
    other = tmp_path / "other"
    build_world(other, SMALL.model_copy(update={"seed": 6}), search_top_k=3)
    assert (other / "corpus.jsonl").read_bytes() != (world_dir / "corpus.jsonl").read_bytes()
    assert world_is_built(world_dir, SMALL) and not world_is_built(
        world_dir, SMALL.model_copy(update={"seed": 6})
    )


def test_corpus_layout(world_dir):
    corpus = _read_jsonl(world_dir / "corpus.jsonl")
    assert len({r["id"] for r in corpus}) == len(corpus)
    for r in corpus:
        assert set(r) == {"id", "title", "text", "contents"}
        assert r["contents"] == f'"{r["title"]}"\n{r["text"]}'
    # 24 people: birth, work, hobby passages each, + one marriage passage per married person
    people = {r["title"] for r in corpus if " enjoys " in r["text"]}
    assert len(people) == 24


def test_answers_follow_from_the_corpus_text(world_dir):
    corpus = _read_jsonl(world_dir / "corpus.jsonl")
    facts = _facts(corpus)
    titles = sorted({r["title"] for r in corpus}, key=len, reverse=True)
    splits = {name: _read_jsonl(world_dir / f"{name}.jsonl") for name in ("train", "test", "demos")}
    assert [len(splits[n]) for n in ("train", "test")] == [30, 12]
    for name, rows in splits.items():
        for row in rows:
            start = next(t for t in titles if t in row["question"])  # the one entity the question names
            entity = start
            for rel in row["chain"]:
                entity = facts[rel, entity][0]
            assert row["answers"][0] == entity, (name, row)
            assert row["hops"] == len(row["chain"])
    questions = [{r["question"] for r in rows} for rows in splits.values()]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])
    # hop counts interleave 1, 2, 3, so each split is balanced
    assert [sum(r["hops"] == h for r in splits["train"]) for h in (1, 2, 3)] == [10, 10, 10]


def test_country_and_organisation_answers_have_their_short_alias(world_dir):
    rows = _read_jsonl(world_dir / "train.jsonl") + _read_jsonl(world_dir / "test.jsonl")
    for row in rows:
        last = row["chain"][-1]
        if last == "country":
            form, alias = row["answers"][0].split(" of ")
            assert form in ("Kingdom", "Republic", "Duchy", "Commonwealth") and row["answers"] == [
                row["answers"][0],
                alias,
            ]
        elif last == "employer":
            assert row["answers"][1] == row["answers"][0].split()[0]
        else:
            assert len(row["answers"]) == 1


def test_demo_searches_retrieve_their_fact_with_plain_bm25s(world_dir):
    """Each demo query, run through bm25s itself (the proxy's defaults: k1=0.9, b=0.4, English stop words),
    ranks the passage stating the hop's fact within the stored top 3; the stored hits are the proxy's."""
    corpus = _read_jsonl(world_dir / "corpus.jsonl")
    facts = _facts(corpus)
    index = bm25s.BM25(k1=0.9, b=0.4)
    index.index(
        bm25s.tokenize([f"{r['title']}\n{r['text']}" for r in corpus], show_progress=False),
        show_progress=False,
    )
    demos = _read_jsonl(world_dir / "demos.jsonl")
    assert len(demos) == 24
    for demo in demos:
        subjects = [
            next(
                t
                for t in sorted({r["title"] for r in corpus}, key=len, reverse=True)
                if t in demo["question"]
            )
        ]
        for rel in demo["chain"]:
            subjects.append(facts[rel, subjects[-1]][0])
        searches, final = demo["steps"][:-1], demo["steps"][-1]
        assert len(searches) == demo["hops"] and final["answer"] == demo["answers"][0] == subjects[-1]
        for k, (step, rel) in enumerate(zip(searches, demo["chain"], strict=True)):
            fact_id = facts[rel, subjects[k]][1]
            assert subjects[k] in step["query"]
            docs, _ = index.retrieve(
                bm25s.tokenize([step["query"]], show_progress=False), k=3, show_progress=False
            )
            assert fact_id in {corpus[int(i)]["id"] for i in docs[0]}
            assert fact_id in [h["id"] for h in step["results"]] and len(step["results"]) == 3
            assert all(set(h) == {"id", "title", "text", "score"} for h in step["results"])
            # the next turn's thinking restates the fact it just read (a brief final turn does not)
            nxt = demo["steps"][k + 1]["think"]
            assert subjects[k + 1] in nxt or (
                nxt == "The last passage answers the question." and k == len(searches) - 1
            )


def test_demo_observations_are_what_the_real_proxy_returns(world_dir, tmp_path):
    """The proxy subprocess serving the world corpus answers every demo query with the stored hits."""
    settings = ProxySettings(
        backend="bm25", corpus=world_dir / "corpus.jsonl", cache=CacheSettings(mode="off", dir=tmp_path)
    )
    demos = _read_jsonl(world_dir / "demos.jsonl")
    steps = [step for demo in demos for step in demo["steps"][:-1]]
    with start_proxy(settings) as proxy:
        answers = SearchClient(proxy.url).search([s["query"] for s in steps], top_k=3)
    for step, hits in zip(steps, answers, strict=True):
        assert [(h["id"], h["title"], h["text"]) for h in hits] == [
            (h["id"], h["title"], h["text"]) for h in step["results"]
        ]
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in step["results"]], rel=1e-6)
    # a brief final turn every other demo, so the model also answers straight from a passage
    assert (
        sum(d["steps"][-1]["think"] == "The last passage answers the question." for d in demos)
        == len(demos) // 2
    )


def test_demos_render_in_the_search_r1_protocol(world_dir):
    cfg = RolloutConfig(search_top_k=3)
    protocol = make_protocol(cfg, None, "<answer>")
    for demo in _read_jsonl(world_dir / "demos.jsonl"):
        segments = render_demo(demo, protocol)
        kinds = [kind for kind, _ in segments]
        assert kinds == ["prompt"] + ["turn", "observation"] * demo["hops"] + ["turn"]
        assert segments[0][1] == cfg.prompt_template.replace("{question}", demo["question"])
        turns = [text for kind, text in segments if kind == "turn"]
        observations = [text for kind, text in segments if kind == "observation"]
        for step, turn, obs in zip(demo["steps"], turns, observations, strict=False):
            action = protocol.parse(turn)
            assert action.kind == "search" and action.queries == (step["query"],)
            assert obs.startswith("\n\n<information>Doc 1(Title: ") and obs.endswith("</information>\n\n")
            for hit in step["results"]:
                assert f"(Title: {hit['title']}) {hit['text']}\n" in obs
        final = protocol.parse(turns[-1])
        assert final.kind == "answer" and final.answer == demo["answers"][0]


def test_cli_writes_every_file_and_a_summary(tmp_path, capsys):
    out = tmp_path / "cli"
    sets = ["data.world.n_people=16", "data.world.n_train=9", "data.world.n_test=3", "data.world.n_demos=6"]
    assert main([str(out), "--seed", "2"] + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((out / "world.json").read_text(encoding="utf-8"))
    assert summary["seed"] == 2 and summary["questions"] == {"train": 9, "test": 3, "demo": 6}
    assert summary["entities"] == {
        "people": 16,
        "organisations": 5,
        "cities": 4,
        "countries": 2,
    }  # 16//3, 16//4, 4//3→2
    assert summary["passages"] == len(_read_jsonl(out / "corpus.jsonl"))
    assert "9 train / 3 test / 6 demo questions" in capsys.readouterr().out


def test_too_many_questions_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="raise data.world.n_people or lower the split sizes"):
        build_world(tmp_path, WorldConfig(n_people=4, n_train=400, n_test=100, n_demos=600))
