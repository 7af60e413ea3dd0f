"""Dataset readers on the real shipped QA files and on hand-written rows; the resumable prompt sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from igpo_rlhf.config import WorldConfig
from igpo_rlhf.data.datasets import PromptSampler, load_questions, question_from_prompt, read_file
from igpo_rlhf.rollout.trajectory import PromptItem

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT.parent / "shared" / "data" / "qa"
needs_shared = pytest.mark.skipif(not QA.is_dir(), reason="../shared/data/qa is not present on this machine")

SEARCH_R1_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. ... For example, <answer> Beijing </answer>. Question: {q}\n"
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- real files
@needs_shared
def test_deepresearcher_parquet_rows_match_the_raw_columns():
    path = QA / "deepresearcher_dev.parquet"
    items = read_file(path)
    raw = pq.read_table(path).to_pylist()
    assert len(items) == 875  # the README's row count
    for k in (0, 1, 500, 874):
        assert items[k].question == raw[k]["prompt"][0]["content"].strip()
        assert items[k].golds == [
            a.strip() for a in raw[k]["reward_model"]["ground_truth"].split("<|answer_split|>")
        ]
        assert items[k].meta["data_source"] == raw[k]["data_source"]
        assert items[k].meta["row"] == k and items[k].meta["source"] == str(path)
    # a trivia row with many aliases: the first alias and the count, read off the file by hand
    tq = next(i for i in items if i.meta["data_source"] == "tq" and "Ottoman" in i.question)
    assert tq.golds[0] == "türkiye" and "turkey" in tq.golds and len(tq.golds) == 26


@needs_shared
def test_r1searcher_jsonl_and_max_samples_across_files():
    bamboogle = QA / "r1searcher_bamboogle.jsonl"
    first = json.loads(bamboogle.read_text(encoding="utf-8").splitlines()[0])
    items = load_questions([str(bamboogle), str(QA / "r1searcher_hotpotqa_500.jsonl")], max_samples=130)
    assert len(items) == 130  # 125 from bamboogle, then 5 from hotpotqa
    assert items[0].question == first["question"] and items[0].golds == [first["answer"]]
    assert items[0].meta["id"] == first["idx"]
    assert items[125].meta["source"].endswith("r1searcher_hotpotqa_500.jsonl") and items[125].meta["row"] == 0


# ------------------------------------------------------------------------------ hand-written rows
def test_search_r1_verl_parquet_extracts_the_question_from_the_template(tmp_path):
    rows = [
        {
            "data_source": "nq",
            "prompt": [{"role": "user", "content": SEARCH_R1_TEMPLATE.format(q="who wrote the iliad?")}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": ["Homer", "Homeros"]}},
            "extra_info": {"split": "test", "index": 7},
        }
    ]
    path = tmp_path / "sr1.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    [item] = read_file(path)
    assert item == PromptItem(
        "who wrote the iliad?",
        ["Homer", "Homeros"],
        {"source": str(path), "row": 0, "data_source": "nq", "id": 7},
    )


def test_flashrag_rows_and_our_jsonl(tmp_path):
    raw = _jsonl(
        tmp_path / "raw.jsonl", [{"id": "test_0", "question": "q one?", "golden_answers": ["a", "b"]}]
    )
    [item] = read_file(raw)
    assert (item.question, item.golds, item.meta["id"]) == ("q one?", ["a", "b"], "test_0")
    ours = _jsonl(
        tmp_path / "ours.jsonl",
        [
            {"id": "x1", "question": " Who? ", "answers": ["Ann", " A. N. "], "hops": 2},
            {"question": "Q2", "answers": "B"},
        ],
    )
    items = read_file(ours)
    assert items[0].question == "Who?" and items[0].golds == ["Ann", "A. N."]
    assert items[0].meta == {"source": str(ours), "row": 0, "id": "x1", "hops": 2}
    assert items[1].golds == ["B"]  # a single string is one alias


def test_question_from_prompt_keeps_plain_questions():
    assert question_from_prompt("What is the Question: of life?") == "What is the Question: of life?"
    assert question_from_prompt(SEARCH_R1_TEMPLATE.format(q="Where is X?")) == "Where is X?"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "", "answers": ["a"]}, "'question' is ''"),
        ({"question": 3, "answers": ["a"]}, "'question' is 3"),
        ({"question": "q", "answers": []}, "'answers'"),
        ({"question": "q", "answers": ["  "]}, "no non-empty answer"),
        ({"question": "q", "answers": 5}, "'answers'"),
    ],
)
def test_bad_row_names_file_row_and_expectation(tmp_path, row, message):
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [{"question": "fine", "answers": ["ok"]}, {"question": "ok", "answers": ["y"]}, row],
    )
    with pytest.raises(ValueError, match="bad.jsonl row 2") as err:
        read_file(path, "jsonl")
    assert message in str(err.value)


def test_bad_verl_rows_and_unreadable_files(tmp_path):
    rows = [
        {
            "data_source": "nq",
            "prompt": [{"role": "system", "content": "x"}],
            "reward_model": {"ground_truth": "a"},
        }
    ]
    path = tmp_path / "dr.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(
        ValueError, match=r"dr.parquet row 0 \(deepresearcher format\): 'prompt' holds no user message"
    ):
        read_file(path)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match="g.parquet is not a readable parquet file"):
        read_file(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        read_file(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown extension '.csv'"):
        read_file(_jsonl(tmp_path / "x.csv", [{"question": "q", "answers": ["a"]}]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answers": ["a"]}\n{"question": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl line 2: not valid JSON"):
        read_file(broken)
    with pytest.raises(ValueError, match="cannot tell its format"):
        read_file(_jsonl(tmp_path / "odd.jsonl", [{"query": "q"}]))
    with pytest.raises(ValueError, match="format='csv' is unknown"):
        read_file(broken, "csv")


def test_world_splits_are_rendered_on_demand(tmp_path):
    world = WorldConfig(dir=str(tmp_path / "w"), n_people=12, n_train=10, n_test=5, n_demos=5, max_hops=2)
    train = load_questions(["world:train"], world=world)
    test = load_questions(["world:test"], world_dir=world.dir)  # now it exists: read as is
    assert len(train) == 10 and len(test) == 5
    assert not {i.question for i in train} & {i.question for i in test}
    first = json.loads((tmp_path / "w" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert train[0].question == first["question"] and train[0].golds == first["answers"]
    with pytest.raises(ValueError, match="accepted: world:train, world:test"):
        load_questions(["world:dev"], world=world)
    with pytest.raises(ValueError, match="render the world first"):
        load_questions(["world:train"], world_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ sampler
def _items(n: int) -> list[PromptItem]:
    return [PromptItem(f"q{k}", [f"a{k}"]) for k in range(n)]


def test_sampler_order_is_a_seeded_permutation_per_epoch():
    items = _items(10)
    sampler = PromptSampler(items, batch_size=4, seed=3, shuffle=True)
    seen = [int(i.question[1:]) for _ in range(5) for i in sampler.next_batch()]  # 20 = two epochs
    # independently: epoch e is torch.randperm(10) with a generator seeded 3 + e
    expected = []
    for epoch in (0, 1):
        g = torch.Generator()
        g.manual_seed(3 + epoch)
        expected += torch.randperm(10, generator=g).tolist()
    assert seen == expected
    assert sampler.state_dict()["epoch"] == 2 and sampler.state_dict()["position"] == 0


def test_sampler_without_shuffle_wraps_around_epochs():
    sampler = PromptSampler(_items(5), batch_size=3, seed=0, shuffle=False)
    batches = [[i.question for i in sampler.next_batch()] for _ in range(3)]
    assert batches == [["q0", "q1", "q2"], ["q3", "q4", "q0"], ["q1", "q2", "q3"]]
    assert (sampler.epoch, sampler.position) == (1, 4)


def test_sampler_resume_continues_the_same_order():
    items = _items(7)
    straight = PromptSampler(items, batch_size=3, seed=11)
    reference = [straight.next_batch() for _ in range(6)]
    first = PromptSampler(items, batch_size=3, seed=11)
    for _ in range(2):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = PromptSampler(items, batch_size=3, seed=11)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(4)] == reference[2:]


def test_sampler_rejects_bad_arguments_and_foreign_state():
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptSampler([], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        PromptSampler(_items(3), batch_size=0, seed=0)
    state = PromptSampler(_items(3), batch_size=2, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_items=3 but this sampler has num_items=4"):
        PromptSampler(_items(4), batch_size=2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0 but this sampler has seed=1"):
        PromptSampler(_items(3), batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="position=9"):
        PromptSampler(_items(3), batch_size=2, seed=0).load_state_dict(state | {"position": 9})
