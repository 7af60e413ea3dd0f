"""`igpo train` refuses bad input before starting anything: exit code 2 and a message naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import Qwen2Config

from igpo_rlhf.cli import main as igpo
from igpo_rlhf.ray.train import main as train_main


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """A directory that passes the model check (a config.json); nothing here gets as far as loading it."""
    out = tmp_path / "model"
    Qwen2Config(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        out
    )
    return out


def run(capsys, *argv: str) -> tuple[int, str]:
    code = train_main(list(argv))
    return code, capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_and_bad_value(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", "algorithm:\n  estimatr: igpo\n")
    code, err = run(capsys, "-c", str(cfg))
    assert code == 2 and "algorithm.estimatr: unknown key" in err and "estimator" in err
    good = write(tmp_path / "g.yaml", "train:\n  steps: 2\n")
    code, err = run(capsys, "-c", str(good), "--set", "algorithm.estimatr=1")  # the same key from --set
    assert code == 2 and "algorithm.estimatr: unknown key" in err
    code, err = run(capsys, "-c", str(good), "--set", "train.lr=-1")
    assert code == 2 and "train.lr" in err and "greater than 0" in err
    code, err = run(capsys, "-c", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml does not exist" in err


def test_cross_section_constraints_and_model_path(tmp_path, capsys, model_dir):
    cfg = write(
        tmp_path / "c.yaml", f"model:\n  path: {model_dir}\nlogging:\n  run_dir: {tmp_path / 'run'}\n"
    )
    code, err = run(capsys, "-c", str(cfg), "--set", "train.prompts_per_step=3", "--set", "rollout.n_samples=2",
                    "--set", "resources.policy.num_actors=4")  # fmt: skip
    assert (
        code == 2
        and "6 rollouts per step must divide evenly" in err
        and "resources.policy.num_actors (4)" in err
    )
    code, err = run(capsys, "-c", str(cfg), "--set", "model.path=/nonexistent/model")
    assert code == 2 and "model.path='/nonexistent/model' is not a Hugging Face checkpoint directory" in err
    code, err = run(capsys, "-c", str(cfg), "--resume", "--overwrite")
    assert code == 2 and "exclude each other" in err


def test_bad_dataset_row_names_file_and_row(tmp_path, capsys, model_dir):
    data = tmp_path / "qa.jsonl"
    rows = [{"id": "a", "question": "Who?", "answers": ["X"]}, {"id": "b", "question": "What?"}]
    write(data, "".join(json.dumps(r) + "\n" for r in rows))
    cfg = write(
        tmp_path / "c.yaml", f"model:\n  path: {model_dir}\ndata:\n  train: ['{data}']\n  format: jsonl\n"
    )
    code, err = run(capsys, "-c", str(cfg))
    assert code == 2 and f"{data} row 1" in err


def test_existing_checkpoints_need_resume(tmp_path, capsys, model_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00003").mkdir(parents=True)
    data = write(tmp_path / "qa.jsonl", json.dumps({"question": "Who?", "answers": ["X"]}) + "\n")
    cfg = write(tmp_path / "c.yaml", f"model:\n  path: {model_dir}\ndata:\n  train: ['{data}']\n"
                                     f"logging:\n  run_dir: {run_dir}\n")  # fmt: skip
    code, err = run(capsys, "-c", str(cfg))
    assert code == 2 and "already holds checkpoints; pass --resume" in err


def test_the_igpo_dispatcher_reaches_train(capsys):
    with pytest.raises(SystemExit) as exit_info:
        igpo(["train", "--help"])
    assert exit_info.value.code == 0 and "--resume" in capsys.readouterr().out
