"""save_pretrained writes a standard PEFT LoRA plus flare_config.json; loading restores the model exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DECODER_SIZES, HEADS, batch_for, build, randomize_lora
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM

from flare_xlt import FlareConfig, FlareModel, get_flare_model


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("llama", FlareConfig(fusion="cross_attention", cross_attention_heads=2, target_modules="all-linear")),
        ("xlmr-cls", FlareConfig(modules_to_save=HEADS["xlmr-cls"], source_site="block_input")),
        ("mt5", FlareConfig(fusion="mul_relu")),
        ("llama", FlareConfig(mt_source_dim=10)),
    ],
    ids=["llama-cross-attention", "xlmr-head", "mt5", "llama-mt"],
)
def test_round_trip_gives_bitwise_identical_logits(tmp_path, kind, config):
    flare = get_flare_model(build(kind), config).eval()
    randomize_lora(flare)
    inputs = batch_for(kind)
    if config.mt_source_dim:
        inputs["source_embeds"] = torch.randn(*inputs.pop("source_input_ids").shape, config.mt_source_dim)
    if kind == "mt5":
        inputs["decoder_input_ids"] = torch.tensor([[0, 4, 5], [0, 6, 7]])
    with torch.no_grad():
        expected = flare(**inputs).logits
    flare.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "flare_config.json",
    ]
    assert FlareConfig.load(tmp_path) == config

    loaded = FlareModel.from_pretrained(build(kind), tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    trainable = FlareModel.from_pretrained(build(kind), tmp_path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == {
        n for n, p in flare.named_parameters() if p.requires_grad
    }


def test_plain_peft_loads_the_directory_as_target_only_lora(tmp_path):
    flare = get_flare_model(build("xlmr-cls"), FlareConfig(fusion="cross_attention", modules_to_save=["classifier"]))
    randomize_lora(flare)
    flare.eval().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    plain = PeftModel.from_pretrained(build("xlmr-cls"), tmp_path).eval()
    inputs = batch_for("xlmr-cls")
    target = {k: v for k, v in inputs.items() if not k.startswith("source_")}
    with torch.no_grad():
        torch.testing.assert_close(plain(**target).logits, flare(**target).logits, atol=1e-6, rtol=0)


def test_missing_flare_config_is_named(tmp_path):
    flare = get_flare_model(build("llama"), FlareConfig())
    PeftModel.save_pretrained(flare, tmp_path)  # a plain PEFT save, without flare_config.json
    with pytest.raises(FileNotFoundError, match=r"flare_config\.json"):
        FlareModel.from_pretrained(build("llama"), tmp_path / "flare")


def test_adapter_of_another_base_model_names_the_shapes(tmp_path):
    get_flare_model(build("llama"), FlareConfig()).save_pretrained(tmp_path)
    wider = LlamaForCausalLM(LlamaConfig(**{**DECODER_SIZES, "hidden_size": 48}))
    with pytest.raises(ValueError, match=r"size mismatch.*q_proj\.lora_A"):
        FlareModel.from_pretrained(wider, tmp_path)


def test_save_overwrites_previous_files_whole(tmp_path):
    flare = get_flare_model(build("llama"), FlareConfig())
    flare.save_pretrained(tmp_path)
    randomize_lora(flare)
    flare.save_pretrained(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    loaded = FlareModel.from_pretrained(build("llama"), tmp_path)
    for name, parameter in flare.named_parameters():
        if "lora_" in name:
            assert torch.equal(parameter, loaded.get_parameter(name))


def test_hub_round_trip_forwards_revision_and_token_and_loads_identically(tmp_path, monkeypatch):
    """push_to_hub and from_pretrained(repo id) through huggingface_hub's public functions, with the hub replaced by a
    folder: nothing is sent or read over the network."""
    import shutil

    import huggingface_hub

    hub, calls = tmp_path / "hub", []

    class FolderHub:
        def __init__(self, token=None):
            calls.append(("HfApi", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            calls.append(("upload_folder", repo_id, revision))
            shutil.copytree(folder_path, hub / repo_id)
            return f"https://huggingface.co/{repo_id}/commit/0"

    def snapshot_download(repo_id, revision=None, token=None, allow_patterns=None):
        calls.append(("snapshot_download", repo_id, revision, token))
        return str(hub / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FolderHub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    flare = get_flare_model(build("xlmr-cls"), FlareConfig(modules_to_save=HEADS["xlmr-cls"])).eval()
    randomize_lora(flare)
    assert flare.push_to_hub("me/flare", private=True, token="secret", revision="v1").endswith("/commit/0")
    flare.save_pretrained(tmp_path / "local")
    from_hub = FlareModel.from_pretrained(build("xlmr-cls"), "me/flare", revision="v1", token="secret")
    from_folder = FlareModel.from_pretrained(build("xlmr-cls"), tmp_path / "local")
    assert calls == [
        ("HfApi", "secret"),
        ("create_repo", "me/flare", True, True),
        ("upload_folder", "me/flare", "v1"),
        ("snapshot_download", "me/flare", "v1", "secret"),
    ]
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        assert torch.equal(from_hub(**inputs).logits, from_folder(**inputs).logits)
        assert torch.equal(from_hub(**inputs).logits, flare(**inputs).logits)
