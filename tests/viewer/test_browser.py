"""The viewer's pages in a real headless Chromium (Debian's, through its chromedriver) over a real 2-step
training run: what a user sees is compared with the rollouts and metrics files and with the credit computed
here from the formulas (expected.py). Each test saves a screenshot under its tmp_path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.viewer.conftest import broken_copy, make_eval_dir
from tests.viewer.expected import group_expectations, read_jsonl

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def browser(browser):
    """The session's browser, its console log emptied (page_errors reports this test's pages only)."""
    browser.get_log("browser")
    return browser


def step_rows(run: Path, step: int) -> list[dict]:
    return read_jsonl(run / "rollouts" / f"step_{step:05d}.jsonl")


def open_page(driver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def screenshot(driver, path: Path) -> None:
    """The whole page (the window stretched to the page's height), then the window back to 1400x1000."""
    height = driver.execute_script("window.scrollTo(0, 0); return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height, 600), 5000) + 200)  # + the window frame around the viewport
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    assert path.stat().st_size > 10_000


def page_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def value(el) -> float:
    return float(el.get_attribute("data-value"))


def shown(el) -> float:
    """The number as displayed ("+0.5845", "3.2e-4", "–" is not a number)."""
    return float(el.text.replace("−", "-"))


def wait_list(driver, total: int) -> list:
    """The list's rows once a reload has finished and shows `total` trajectories."""
    WebDriverWait(driver, 30).until(
        lambda d: (
            d.execute_script(
                "const t = document.querySelector('#list-table'); const s = document.querySelector('#list-summary');"
                "return t && !('loading' in t.dataset) && s.dataset.total"
            )
            == str(total)
        )
    )
    return driver.find_elements(By.CSS_SELECTOR, "#traj-table tbody tr")


def test_overview_charts_hover_and_metric_picking(browser, viewer, trained_run, tmp_path):
    logged = read_jsonl(trained_run / "metrics.jsonl")
    open_page(browser, viewer.url + "/")
    titles = [c.get_attribute("data-chart") for c in browser.find_elements(By.CSS_SELECTOR, "[data-chart]")]
    assert titles == [
        "Reward and F1 (training rollouts)",
        "Information gain: mean r_t",
        "Share of IG rewards > 0",
        "KL to the reference",
        "Policy entropy",
        "Turns and searches per trajectory",
        "Time per phase (s)",
    ]  # fmt: skip  (no held-out F1: this run logged no eval/*)
    card = browser.find_element(By.CSS_SELECTOR, '[data-chart="Reward and F1 (training rollouts)"]')
    assert len(card.find_elements(By.CSS_SELECTOR, "path.chart-line")) == 3
    overlay = card.find_elements(By.CSS_SELECTOR, "svg rect")[-1]
    width = overlay.rect["width"]
    ActionChains(browser).move_to_element_with_offset(
        overlay, int(width / 2) - 2, 0
    ).perform()  # the last step
    tip = card.find_element(By.CSS_SELECTOR, ".chart-tip")
    WebDriverWait(browser, 10).until(lambda d: tip.is_displayed())
    lines = dict(line.split(": ") for line in tip.text.splitlines()[1:])
    assert tip.text.splitlines()[0] == "step 2"
    assert float(lines["reward/f1"]) == pytest.approx(logged[1]["reward/f1"], abs=5e-4)
    assert float(lines["reward/em"]) == pytest.approx(logged[1]["reward/em"], abs=5e-4)
    kl = browser.find_element(By.CSS_SELECTOR, '[data-chart="KL to the reference"]')
    Select(kl.find_element(By.CSS_SELECTOR, "select.metric-pick")).select_by_value("policy/grad_norm")
    assert [e.text.rstrip("×").strip() for e in kl.find_elements(By.CSS_SELECTOR, ".legend-item")] == [
        "policy/kl",
        "policy/grad_norm",
    ]
    assert len(kl.find_elements(By.CSS_SELECTOR, "path.chart-line")) == 2
    Select(browser.find_element(By.CSS_SELECTOR, ".add-chart select")).select_by_value(
        "rollout/response_tokens"
    )
    assert browser.find_element(By.CSS_SELECTOR, '[data-chart="rollout/response_tokens"]')
    screenshot(browser, tmp_path / "overview.png")
    assert page_errors(browser) == []


def test_held_out_f1_chart(browser, serve, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    logged = read_jsonl(run / "metrics.jsonl")
    logged[1] |= {"eval/f1": 0.25, "eval/nq/f1": 0.5, "eval/nq/em": 0.5}  # validation ran at step 2 only
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in logged), encoding="utf-8")
    server = serve(run)
    open_page(browser, server.url + "/")
    card = browser.find_element(By.CSS_SELECTOR, '[data-chart="Held-out F1"]')
    legend = [e.text.rstrip("×").strip() for e in card.find_elements(By.CSS_SELECTOR, ".legend-item")]
    assert legend == ["eval/f1", "eval/nq/f1"]  # eval/nq/em is no F1
    assert (
        len(card.find_elements(By.CSS_SELECTOR, "svg circle[r='2.6']")) == 2
    )  # one point each, drawn as a dot


def test_trajectory_page_turns_beliefs_advantages_and_tokens(browser, viewer, trained_run, tmp_path):
    rows = step_rows(trained_run, 1)
    k = max(range(len(rows)), key=lambda i: (len(rows[i]["turn_spans"]), i))
    row = rows[k]
    want = group_expectations(rows)[((None, row["group_id"]), row["sample_id"])]
    open_page(browser, f"{viewer.url}/trajectory/1/{k}")
    turns = browser.find_elements(By.CSS_SELECTOR, "#turns .turn")
    T = len(row["turn_spans"])
    assert len(turns) == T and T >= 2
    for t, card in enumerate(turns):
        before = card.find_element(By.CSS_SELECTOR, ".log-b-before")
        assert value(before) == row["beliefs"][t]
        assert shown(before) == pytest.approx(math.exp(row["beliefs"][t]), rel=1e-3)
        after = card.find_elements(By.CSS_SELECTOR, ".log-b-after")
        if t + 1 < T:
            assert value(after[0]) == row["beliefs"][t + 1]
        else:
            assert after == []  # the last turn has the outcome, no belief after it
        trained = card.find_element(By.CSS_SELECTOR, "tr.advantage .num")
        assert value(trained) == row["turn_advantages"][t]
        assert shown(trained) == pytest.approx(row["turn_advantages"][t], abs=5e-5)
        for cls, key in (("reward", "rewards"), ("normalized", "normalized"), ("advantage-igpo", "igpo"),
                         ("advantage-grpo", "grpo")):  # fmt: skip
            assert value(card.find_element(By.CSS_SELECTOR, f"tr.{cls} .num")) == pytest.approx(
                want[key][t], abs=1e-9
            )
        queries = [q.text for q in card.find_elements(By.CSS_SELECTOR, ".query")]
        assert queries == row["actions"][t]["queries"]
    check = browser.find_element(By.ID, "credit-check")
    assert "match" in check.get_attribute("class").split() and check.text.startswith("✓")
    belief_markers = browser.find_elements(By.CSS_SELECTOR, "#belief-card svg circle[r='2.6']")
    assert len(belief_markers) == len(row["beliefs"])
    browser.find_element(By.CSS_SELECTOR, "#belief-card .scale-toggle input").click()  # b -> log b
    y_ticks = browser.find_elements(By.CSS_SELECTOR, "#belief-card text.chart-tick[text-anchor='end']")
    y = [float(t.text) for t in y_ticks]  # the y axis now spans the log beliefs (b's axis starts at 0)
    assert y and max(y) <= 0 and min(y) <= min(row["beliefs"]) and max(y) >= max(row["beliefs"])
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#token-box .tok"))
    kinds = browser.execute_script(
        "return [...document.querySelectorAll('#token-box .tok')].map(s => s.classList[1]).join('')"
    )
    want_kinds = ["p"] * len(row["token_ids"])
    for spans, kind in ((row["turn_spans"], "a"), (row["obs_spans"], "o")):
        for a, b in spans:
            want_kinds[a:b] = [kind] * (b - a)
    assert kinds == "".join(want_kinds)
    texts = browser.execute_script(
        "return [...document.querySelectorAll('#token-box .tok')].map(s => s.textContent)"
    )
    a, b = row["turn_spans"][0]
    assert "".join(texts[a:b]) == row["turn_texts"][0]
    screenshot(browser, tmp_path / "trajectory.png")
    assert page_errors(browser) == []


def test_list_filters_sort_and_open_a_row(browser, viewer, trained_run, tmp_path):
    rows = {step: step_rows(trained_run, step) for step in (1, 2)}
    open_page(browser, f"{viewer.url}/trajectories?part=1")
    assert len(wait_list(browser, len(rows[1]))) == len(rows[1])
    word = rows[1][-1]["question"].split()[-1].rstrip("?")
    box = browser.find_element(By.CSS_SELECTOR, "input[name=q]")
    box.send_keys(word)
    expected = [k for k, r in enumerate(rows[1]) if word.casefold() in r["question"].casefold()]
    listed = wait_list(browser, len(expected))
    assert [int(tr.get_attribute("data-index")) for tr in listed] == expected
    box.clear()
    box.send_keys(" ")  # an input event for the cleared box
    wait_list(browser, len(rows[1]))
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=part]")).select_by_value("all")
    wait_list(browser, 16)
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=outcome]")).select_by_value("no_answer")
    expected = [(s, k) for s in (1, 2) for k, r in enumerate(rows[s]) if r["answer"] is None]
    listed = wait_list(browser, len(expected))
    assert [
        (int(tr.get_attribute("data-part")), int(tr.get_attribute("data-index"))) for tr in listed
    ] == expected
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=turns]")).select_by_value("2")
    expected = [(s, k) for s, k in expected if len(rows[s][k]["turn_spans"]) == 2]
    wait_list(browser, len(expected))
    assert "outcome=no_answer" in browser.current_url and "turns=2" in browser.current_url
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=sort]")).select_by_value("ig")
    WebDriverWait(browser, 30).until(lambda d: "sort=ig" in d.current_url)
    listed = wait_list(browser, len(expected))
    ig = [value(tr.find_elements(By.CSS_SELECTOR, "td .num")[2]) for tr in listed]
    assert ig == sorted((sum(rows[s][k]["turn_rewards"][:-1]) for s, k in expected), reverse=True)
    screenshot(browser, tmp_path / "list.png")
    first = listed[0]
    step, index = first.get_attribute("data-part"), first.get_attribute("data-index")
    first.find_element(By.CSS_SELECTOR, "td.question a").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.current_url.split("?")[0].endswith(f"/trajectory/{step}/{index}")
    )
    assert page_errors(browser) == []


def test_group_page_shows_grpo_and_igpo_per_turn(browser, viewer, trained_run, tmp_path):
    rows = step_rows(trained_run, 2)
    gid = max(
        {r["group_id"] for r in rows},
        key=lambda g: sum(len(r["turn_spans"]) for r in rows if r["group_id"] == g),
    )
    members = [r for r in rows if r["group_id"] == gid]
    want = group_expectations(rows)
    open_page(browser, f"{viewer.url}/group/2/{gid}")
    trs = browser.find_elements(By.CSS_SELECTOR, "#group-table tbody tr")
    assert len(trs) == len(members)
    for tr, m in zip(trs, members, strict=True):
        e = want[((None, gid), m["sample_id"])]
        cells = tr.find_elements(By.CSS_SELECTOR, "td.turn-cell:not(.empty)")
        assert len(cells) == len(m["turn_spans"])
        for t, cell in enumerate(cells):
            assert value(cell.find_element(By.CSS_SELECTOR, ".bar-row.igpo .num")) == pytest.approx(
                e["igpo"][t], abs=1e-9
            )
            assert value(cell.find_element(By.CSS_SELECTOR, ".bar-row.grpo .num")) == pytest.approx(
                e["grpo"][t], abs=1e-9
            )
    screenshot(browser, tmp_path / "group.png")
    assert page_errors(browser) == []


def test_malformed_rollouts_are_reported_on_the_page(browser, serve, trained_run, tmp_path):
    server = serve(broken_copy(trained_run, tmp_path / "run"))
    good = len(step_rows(trained_run, 2))
    open_page(browser, f"{server.url}/trajectories?part=2")
    assert len(wait_list(browser, good)) == good
    box = browser.find_element(By.CSS_SELECTOR, "#list-problems .problems")
    assert "3 bad lines" in box.text
    assert f"rollouts/step_00002.jsonl:{good + 1} not a JSON object" in box.text
    assert f"rollouts/step_00002.jsonl:{good + 2} row missing keys turn_spans" in box.text
    assert f"rollouts/step_00002.jsonl:{good + 3} truncated: the file ends mid-row" in box.text
    screenshot(browser, tmp_path / "malformed.png")
    open_page(browser, f"{server.url}/")
    assert "metrics.jsonl:3 truncated" in browser.find_element(By.CSS_SELECTOR, ".problems").text
    open_page(browser, f"{server.url}/trajectory/2/{good + 1}")
    assert "row missing keys turn_spans" in browser.find_element(By.CSS_SELECTOR, "#main .problems").text


def test_eval_directory_and_token_in_the_browser(browser, serve, trained_run, tmp_path):
    out = make_eval_dir(trained_run, tmp_path / "eval")
    server = serve(out, token="tok-123")
    open_page(browser, f"{server.url}/?token=tok-123")  # the page passes the token on to every API call
    table = browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
    assert [tr.find_element(By.CSS_SELECTOR, "td").text for tr in table] == ["nq", "hotpotqa", "average"]
    assert (
        len(browser.find_elements(By.CSS_SELECTOR, "#eval-beliefs path.chart-line")) == 2
    )  # one curve per source
    screenshot(browser, tmp_path / "eval.png")
    open_page(browser, f"{server.url}/trajectories?part=eval&source=nq&token=tok-123")
    rows = read_jsonl(out / "rollouts.jsonl")
    listed = wait_list(browser, sum(r["source"] == "nq" for r in rows))
    listed[0].find_element(By.CSS_SELECTOR, "td.question a").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#turns .turn"))
    index = int(browser.current_url.split("?")[0].rsplit("/", 1)[1])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#turns .turn")) == len(rows[index]["turn_spans"])
    assert "token=tok-123" in browser.current_url
    browser.find_element(By.ID, "group-link").click()  # eval groups: question k of chunk c is group "c-k"
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#group-table tbody tr"))
    group = browser.current_url.split("?")[0].rsplit("/", 1)[1]
    members = [r for r in rows if f"{r['chunk']}-{r['group_id']}" == group]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#group-table tbody tr")) == len(members) == 4
    assert page_errors(browser) == []
