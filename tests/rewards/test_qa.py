"""QA metrics: normalisation, EM / F1 / cover-EM on tricky strings, both scorers, alias formats, real rows."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from igpo_rlhf.rewards import cover_exact_match, exact_match, f1_score, normalize_answer, split_golds

TEST_SET = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qa" / "deepresearcher_test.parquet"
)

# --- normalisation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "squad", "igpo"),
    [
        (
            "The  Eiffel-Tower!!",
            "eiffeltower",
            "the eiffel tower",
        ),  # squad deletes '-', igpo makes it a space
        ("An apple a day", "apple day", "an apple a day"),
        ("Theater of the Absurd", "theater of absurd", "theater of the absurd"),  # 'the' only as a whole word
        ("  U.S.A.\n\t(1776) ", "usa 1776", "u s a 1776"),
        (
            "Minecraft – Pocket Edition",
            "minecraft – pocket edition",
            "minecraft – pocket edition",
        ),  # en dash: not ASCII punctuation
    ],
)
def test_normalize_answer(text, squad, igpo):
    assert normalize_answer(text) == squad
    assert normalize_answer(text, variant="igpo") == igpo


# --- exact match and F1 by hand --------------------------------------------------------------------------


def test_exact_match_articles_and_punctuation():
    assert exact_match("the Beatles.", ["Beatles"]) == 1.0
    assert exact_match("the Beatles.", ["Beatles"], variant="igpo") == 0.0  # igpo keeps 'the'
    assert exact_match("Beatles", ["The Rolling Stones"]) == 0.0


def test_f1_by_hand():
    # {barack, obama, jr} vs {barack, hussein, obama}: 2 common, P = 2/3, R = 2/3 -> F1 = 2/3
    assert f1_score("Barack Obama Jr.", "Barack Hussein Obama") == pytest.approx(2 / 3)
    # the articles vanish under squad: "eiffel tower" vs "eiffel tower in paris": P = 1, R = 2/4 -> 2·0.5/1.5 = 2/3
    assert f1_score("The Eiffel Tower", "Eiffel Tower in Paris") == pytest.approx(2 / 3)
    # igpo keeps 'the': {the, eiffel, tower} vs {eiffel, tower, in, paris}: 2 common, P = 2/3, R = 2/4
    #   -> 2·(2/3)(1/2)/(2/3 + 1/2) = (2/3)/(7/6) = 4/7
    assert f1_score("The Eiffel Tower", "Eiffel Tower in Paris", variant="igpo") == pytest.approx(4 / 7)
    assert f1_score("London", "Paris") == 0.0


def test_f1_multiset_versus_set():
    # squad counts repeats: pred new·2 york·2 vs gold new·2 york·2 city -> 4 common: P = 4/4, R = 4/5 -> 8/9
    assert f1_score("New York New York", "New York New York City") == pytest.approx(8 / 9)
    # repeats in the prediction only count as often as in the gold: min counts new 1, york 1 -> 2 of 4: 2/3
    assert f1_score("New York New York", "New York") == pytest.approx(2 / 3)
    # igpo compares sets: {new, york} vs {new, york, city}: P = 1, R = 2/3 -> 0.8;  vs {new, york} -> 1
    assert f1_score("New York New York", "New York New York City", variant="igpo") == pytest.approx(0.8)
    assert f1_score("New York New York", "New York", variant="igpo") == 1.0


def test_yes_no_rule():
    assert f1_score("Yes.", "yes") == 1.0
    assert f1_score("no", "yes") == 0.0
    # the gold is 'yes' and the prediction differs: squad scores 0 even with the token in common ...
    assert f1_score("yes, they are", "yes") == 0.0
    # ... while the paper's scorer has no such rule: {yes, they, are} vs {yes}: P = 1/3, R = 1 -> 0.5
    assert f1_score("yes, they are", "yes", variant="igpo") == pytest.approx(0.5)
    # and the other direction: prediction 'no' against a longer gold
    assert f1_score("no", "no way") == 0.0
    assert f1_score("noanswer", "noanswer") == 1.0


def test_max_over_aliases():
    golds = ["Lukasz Sebastian Gottwald", "Dr. Luke"]
    # vs alias 1: {luke} ∩ {lukasz, sebastian, gottwald} = ∅ -> 0; vs alias 2: "dr luke" exactly -> 1
    assert f1_score("Dr Luke", golds) == 1.0
    assert exact_match("Dr Luke", golds) == 1.0
    # "Sebastian Gottwald": vs alias 1: P = 1, R = 2/3 -> 0.8; vs alias 2: 0 -> max 0.8
    assert f1_score("Sebastian Gottwald", golds) == pytest.approx(0.8)


def test_empty_after_normalisation():
    # gold "The" normalises to nothing under squad: only an equally empty prediction matches it
    assert exact_match("a", "The") == 1.0 and f1_score("an", "The") == 1.0
    assert f1_score("cat", "The") == 0.0 and cover_exact_match("cat", "The") == 0.0
    # the paper's scorer skips an alias without tokens (F1 0) but compares strings for EM
    assert f1_score("!", "?", variant="igpo") == 0.0 and exact_match("!", "?", variant="igpo") == 1.0


def test_cover_exact_match():
    assert cover_exact_match("It was the Eiffel Tower, in Paris.", ["eiffel tower"]) == 1.0
    assert cover_exact_match("It was in Paris", ["eiffel tower", "Paris"]) == 1.0
    assert cover_exact_match("Paris", ["Paris, France"]) == 0.0
    # whole tokens by default; the plain substring test is available
    assert cover_exact_match("not now", "no") == 0.0
    assert cover_exact_match("not now", "no", whole_words=False) == 1.0
    assert cover_exact_match("in 1945", "1") == 0.0
    assert cover_exact_match("in 1945", "1", whole_words=False) == 1.0


# --- properties -----------------------------------------------------------------------------------------------

answers = st.text(alphabet=st.sampled_from(list("abc XYZ.,-'the")), max_size=20)


@given(answers, answers, st.sampled_from(["squad", "igpo"]))
def test_scores_are_bounded_and_consistent(pred, gold, variant):
    if not gold.strip():
        return  # not a valid gold alias (split_golds rejects it)
    f1 = f1_score(pred, gold, variant)
    em = exact_match(pred, gold, variant)
    cover = cover_exact_match(pred, gold, variant)
    assert 0.0 <= f1 <= 1.0 and em in (0.0, 1.0) and cover in (0.0, 1.0)
    if em == 1.0:
        assert cover == 1.0
        if normalize_answer(gold, variant):
            assert f1 == 1.0
    # single alias: F1 is symmetric in prediction and gold
    if pred.strip():
        assert f1_score(gold, pred, variant) == pytest.approx(f1)


@given(answers, st.sampled_from(["squad", "igpo"]))
def test_normalisation_is_idempotent(text, variant):
    once = normalize_answer(text, variant)
    assert normalize_answer(once, variant) == once


# --- gold alias formats ----------------------------------------------------------------------------------------


def test_split_golds_formats():
    expected = ["Bloomsburg", "The Only Town in Pennsylvania", "Eyersburg"]
    joined = (
        " Bloomsburg<|answer_split|>The Only Town in Pennsylvania<|answer_split|><|answer_split|>Eyersburg "
    )
    assert split_golds(joined) == expected
    assert split_golds(expected) == expected
    assert split_golds(tuple(expected)) == expected
    assert split_golds(np.array(expected)) == expected
    assert (
        split_golds(["Bloomsburg<|answer_split|>The Only Town in Pennsylvania", " ", "Eyersburg"]) == expected
    )
    assert split_golds("Paris") == ["Paris"]


@pytest.mark.parametrize(
    ("golds", "match"),
    [
        ("", "holds no non-empty answer"),
        ("  <|answer_split|> ", "holds no non-empty answer"),
        ([], r"golds=\[\] holds no non-empty answer"),
        (["Paris", 3], r"golds\[1\]=3 is a int; every gold alias must be a str"),
        ({"a": 1}, "golds is a dict; expected a str"),
        (None, "golds is a NoneType; expected a str"),
        (np.array([["a", "b"]]), "golds is a 2-D array; expected a 1-D array of strings"),
    ],
)
def test_split_golds_rejects_bad_input(golds, match):
    with pytest.raises(ValueError, match=match):
        split_golds(golds)


def test_bad_variant_and_prediction_type():
    with pytest.raises(ValueError, match="variant='hotpot' is not a scorer; accepted: 'squad', 'igpo'"):
        f1_score("a", "b", variant="hotpot")
    with pytest.raises(ValueError, match="answer None is a NoneType; expected a str"):
        exact_match(None, "b")


# --- real rows of the shipped DeepResearcher test set ----------------------------------------------------------


@pytest.fixture(scope="module")
def rows_by_index():
    if not TEST_SET.exists():
        pytest.skip(f"{TEST_SET} not present (the shared data folder sits beside the repository)")
    import pyarrow.parquet as pq

    table = pq.read_table(TEST_SET, columns=["extra_info", "reward_model"]).to_pylist()
    return {r["extra_info"]["index"]: r["reward_model"]["ground_truth"] for r in table}


def test_real_rows(rows_by_index):
    # popqa: "What is the capital of Columbia County?"
    golds = rows_by_index["popqa_3474310"]
    assert golds == "Bloomsburg<|answer_split|>The Only Town in Pennsylvania<|answer_split|>Eyersburg"
    assert split_golds(golds) == ["Bloomsburg", "The Only Town in Pennsylvania", "Eyersburg"]
    assert exact_match("bloomsburg", golds) == 1.0
    # "Bloomsburg, Pennsylvania" vs "bloomsburg": P = 1/2, R = 1 -> 2/3;
    # vs "only town in pennsylvania": P = 1/2, R = 1/4 -> 2·(1/8)/(3/4) = 1/3; max = 2/3
    assert f1_score("Bloomsburg, Pennsylvania", golds) == pytest.approx(2 / 3)
    assert cover_exact_match("The answer is Bloomsburg, Pennsylvania", golds) == 1.0

    # 2wiki yes/no question: "Are Pichaqani (Quillacollo-Tapacarí) and Pukintika located in the same country?"
    golds = rows_by_index["2wiki_74fbb72909b911ebbdb0ac1f6bf848b6"]
    assert split_golds(golds) == ["yes"]
    assert f1_score("Yes.", golds) == 1.0 and f1_score("yes, they are", golds) == 0.0

    # hotpotqa: gold "The Panther": the article matters only to the paper's scorer
    golds = rows_by_index["hotpotqa_5abd6a7455429933744ab7c5"]
    assert exact_match("Panther", golds) == 1.0 and exact_match("Panther", golds, variant="igpo") == 0.0
    # igpo: {panther} vs {the, panther}: P = 1, R = 1/2 -> 2/3
    assert f1_score("Panther", golds, variant="igpo") == pytest.approx(2 / 3)

    # triviaqa row with 41 aliases, one of them "swimming pool"
    golds = rows_by_index["tq_bt_3133"]
    assert len(split_golds(golds)) == 41 and exact_match("a swimming pool", golds) == 1.0
