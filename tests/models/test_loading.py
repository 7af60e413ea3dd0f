"""Loading checkpoints and pushing weights in place (igpo_rlhf.models.loading): every role loads a model and
receives θ_old through these."""

import pytest
import torch

from igpo_rlhf.models.loading import check_model_dir, load_causal_lm, load_tokenizer, load_weights_in_place
from tests.scoring.tiny_models import tiny_model


def perturbed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {name: w + 0.05 * torch.randn(w.shape, generator=generator) for name, w in state_dict.items()}


def test_a_state_dict_with_wrong_names_is_refused_before_anything_is_copied():
    model = tiny_model("llama")
    before = {name: w.clone() for name, w in model.state_dict().items()}
    update = perturbed(before)
    missing = {k: v for k, v in update.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match=r"lacks 1 of the model's parameters, e.g. \['model.norm.weight'\]"):
        load_weights_in_place(model, missing.items())
    with pytest.raises(ValueError, match=r"1 names the model does not have, e.g. \['model.extra.weight'\]"):
        load_weights_in_place(model, [*update.items(), ("model.extra.weight", torch.zeros(1))])
    assert all(torch.equal(w, before[name]) for name, w in model.state_dict().items())
    load_weights_in_place(model, update.items())
    assert all(torch.equal(w, update[name]) for name, w in model.state_dict().items())


def test_tied_weights_may_come_under_one_name():
    model = tiny_model("qwen2")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    update = {name: w + 1.0 for name, w in model.named_parameters()}  # lists the tied weight once
    assert "lm_head.weight" not in update
    load_weights_in_place(model, update.items())
    assert torch.equal(model.lm_head.weight, update["model.embed_tokens.weight"])


def test_a_directory_without_config_json_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"model.path='.*nope' is not a Hugging Face checkpoint directory"):
        check_model_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"model.ref_path=.*\(no config.json\)"):
        check_model_dir(tmp_path, "model.ref_path")
    with pytest.raises(ValueError, match="not a Hugging Face checkpoint directory"):
        load_tokenizer(tmp_path)


def test_load_causal_lm_reads_the_saved_weights_in_the_asked_dtype(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path, dtype="bfloat16")
    assert not loaded.training
    for name, w in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == torch.bfloat16
        torch.testing.assert_close(loaded.state_dict()[name].float(), w.bfloat16().float())
    with pytest.raises(ValueError, match="dtype='fp8'; accepted: float32, bfloat16, float16"):
        load_causal_lm(tmp_path, dtype="fp8")


def test_flash_attention_without_flash_attn_is_a_clear_error(tmp_path):
    import importlib.util

    from igpo_rlhf.models.loading import check_attention, load_causal_lm

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    check_attention("sdpa")  # nothing to import
    with pytest.raises(
        ValueError, match=r"model.attn_implementation=flash_attention_2 needs the flash_attn package"
    ):
        load_causal_lm(tmp_path, attn_implementation="flash_attention_2")  # before the directory is read
