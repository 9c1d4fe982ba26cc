"""FLARE-MT source states: a tiny random M2M100 (NLLB's architecture) with a real NllbTokenizer built in-process,
the float16 shard store, and the states fed into a FLARE-MT adapter."""

from __future__ import annotations

import pickle
import random

import pytest
import torch
from conftest import build, build_nllb, randomize_lora
from transformers import M2M100ForConditionalGeneration

import flare_xlt
import flare_xlt.io as io_module
from flare_xlt.mt.states import EncoderStateStore, encoder_states

CORPUS = [
    "The cat sleeps on the warm mat.",
    "A man is playing a guitar in the park.",
    "Two children are reading books at school.",
    "The weather is cold and rainy today.",
    "She bought fresh bread at the market.",
    "The train to the city leaves at noon.",
    "Premise: the dog runs. Hypothesis: an animal moves. Label: entailment",
    "Paka analala kwenye mkeka wa joto.",
    "Mwanamume anapiga gitaa katika bustani.",
    "Watoto wawili wanasoma vitabu shuleni.",
    "Hali ya hewa ni baridi na mvua leo.",
    "Alinunua mkate mpya sokoni.",
    "Treni ya kwenda mjini inaondoka saa sita.",
    "Habari ya asubuhi, rafiki yangu mpendwa.",
    "El gato duerme sobre la alfombra caliente.",
    "Un hombre toca la guitarra en el parque.",
    "Dos niños leen libros en la escuela.",
    "El tiempo está frío y lluvioso hoy.",
    "Ella compró pan fresco en el mercado.",
    "El tren a la ciudad sale al mediodía.",
    "Kucing tidur di atas tikar yang hangat.",
    "Seorang pria bermain gitar di taman.",
    "Dua anak membaca buku di sekolah.",
    "Cuaca hari ini dingin dan hujan.",
]
SWAHILI = [
    "Paka analala.",
    "Mwanamume anapiga gitaa katika bustani na watoto wawili wanasoma vitabu shuleni leo asubuhi.",
    "Habari ya asubuhi, rafiki yangu mpendwa.",
    "Alinunua mkate.",
    "Hali ya hewa ni baridi na mvua leo.",
    "Treni",
    "Watoto wawili wanasoma vitabu shuleni.",
]


@pytest.fixture(scope="module")
def nllb_pair():
    return build_nllb(CORPUS)


@pytest.fixture(scope="module")
def tokenizer(nllb_pair):
    return nllb_pair[0]


@pytest.fixture(scope="module")
def nllb(nllb_pair):
    return nllb_pair[1]


def capture_encoder_inputs(model: M2M100ForConditionalGeneration) -> tuple[list[torch.Tensor], object]:
    """The input_ids of every encoder call, and the hook handle to remove."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    return seen, model.get_encoder().register_forward_pre_hook(hook, with_kwargs=True)


def test_text_is_tagged_with_its_own_language_and_settings_are_restored(nllb, tokenizer):
    swahili, english = tokenizer.convert_tokens_to_ids("swh_Latn"), tokenizer.convert_tokens_to_ids("eng_Latn")
    assert swahili != english
    seen, handle = capture_encoder_inputs(nllb)
    nllb.train()  # dropout must not reach the stored features
    try:
        trained_mode = encoder_states(nllb, tokenizer, SWAHILI, "swh_Latn", batch_size=3)
    finally:
        handle.remove()
        nllb.eval()
    assert seen and all((ids[:, 0] == swahili).all() for ids in seen)
    assert not any((ids == english).any() for ids in seen)
    # The shared tokenizer and the model's mode come back as they were.
    assert tokenizer.src_lang == "eng_Latn" and tokenizer("Paka").input_ids[0] == english
    evaluated = encoder_states(nllb, tokenizer, SWAHILI, "swh_Latn", batch_size=3)
    for a, b in zip(trained_mode, evaluated, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="no language token 'swahili'"):
        encoder_states(nllb, tokenizer, SWAHILI, "swahili")


def test_batching_is_invariant_dynamic_and_keeps_input_order(nllb, tokenizer):
    seen, handle = capture_encoder_inputs(nllb)
    try:
        batched = encoder_states(nllb, tokenizer, SWAHILI, "swh_Latn", batch_size=3)
    finally:
        handle.remove()
    tokenizer.src_lang = "swh_Latn"
    counts = [len(tokenizer(text).input_ids) for text in SWAHILI]
    tokenizer.src_lang = "eng_Latn"
    # Longest batch first, each padded only to its own longest text.
    assert [ids.shape[1] for ids in seen] == sorted(counts, reverse=True)[::3]
    assert [state.shape for state in batched] == [(count, 32) for count in counts]
    for text, state in zip(SWAHILI, batched, strict=True):
        (alone,) = encoder_states(nllb, tokenizer, [text], "swh_Latn")
        torch.testing.assert_close(state, alone, atol=1e-5, rtol=0)
        assert not state.is_inference() and not state.requires_grad and state.dtype == torch.float32
    # The encoder itself is accepted, and a shuffled input comes back in its own order.
    order = list(range(len(SWAHILI)))
    random.Random(0).shuffle(order)
    shuffled = encoder_states(nllb.get_encoder(), tokenizer, [SWAHILI[i] for i in order], "swh_Latn", batch_size=2)
    for position, index in enumerate(order):
        torch.testing.assert_close(shuffled[position], batched[index], atol=1e-5, rtol=0)
    assert encoder_states(nllb, tokenizer, [], "swh_Latn") == []


def test_long_texts_are_truncated_and_counted(nllb, tokenizer):
    long_text = " ".join(SWAHILI * 3)
    seen, handle = capture_encoder_inputs(nllb)
    try:
        with pytest.warns(UserWarning, match=r"1 of 3 texts \(swh_Latn\) are longer than max_length=16"):
            result = encoder_states(nllb, tokenizer, [SWAHILI[0], long_text, SWAHILI[3]], "swh_Latn", max_length=16)
    finally:
        handle.remove()
    assert result[1].shape == (16, 32)
    # The tokenizer's truncation keeps the language tag in front and </s> at the end.
    longest = seen[0][0]
    assert longest[0] == tokenizer.convert_tokens_to_ids("swh_Latn") and longest[-1] == tokenizer.eos_token_id


def random_states(count: int, d_model: int = 32) -> tuple[list[str], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = [f"xnli-sw-{index}" for index in range(count)]
    return ids, [torch.randn(3 + index % 4, d_model, generator=generator) for index in range(count)]


def test_store_round_trip_over_several_shards(tmp_path, monkeypatch):
    ids, states = random_states(7)
    EncoderStateStore.write(tmp_path, ids, states, shard_size=3, metadata={"model": "tiny", "language": "swh_Latn"})
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "index.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    opened = []
    real_safe_open = io_module.safe_open  # the store reads its shards through flare_xlt.io.TensorShards

    def counting_safe_open(path, *args, **kwargs):
        opened.append(path)
        return real_safe_open(path, *args, **kwargs)

    monkeypatch.setattr(io_module, "safe_open", counting_safe_open)
    store = EncoderStateStore(tmp_path)
    assert len(store) == 7 and store.d_model == 32 and "xnli-sw-4" in store and "xnli-sw-7" not in store
    assert store.metadata == {"model": "tiny", "language": "swh_Latn"}
    for _ in range(2):
        for example_id, state in zip(ids, states, strict=True):
            stored = store.get(example_id)
            assert stored.dtype == torch.float16 and torch.equal(stored, state.half())
    assert len(opened) == 3  # one handle per shard, however often it is read

    embeds, mask = store.batch(ids[2:6])
    lengths = [state.shape[0] for state in states[2:6]]
    assert embeds.shape == (4, max(lengths), 32) and embeds.dtype == torch.float32 and mask.dtype == torch.long
    assert mask.sum(1).tolist() == lengths
    for row, (state, length) in enumerate(zip(states[2:6], lengths, strict=True)):
        assert torch.equal(embeds[row, :length], state.half().float())
        assert not embeds[row, length:].any() and not mask[row, length:].any()

    with pytest.raises(KeyError, match=r"'xnli-sw-99' is not in the encoder state store at .* \(7 ids\)"):
        store.batch(["xnli-sw-0", "xnli-sw-99"])
    # DataLoader workers receive the store pickled: the handles are left behind and reopened there.
    assert torch.equal(pickle.loads(pickle.dumps(store)).get("xnli-sw-5"), states[5].half())


def test_store_refuses_bad_input_and_replaces_an_older_store(tmp_path):
    ids, states = random_states(5)
    with pytest.raises(ValueError, match="1 ids occur more than once"):
        EncoderStateStore.write(tmp_path, [*ids[:4], ids[0]], states)
    with pytest.raises(ValueError, match=r"'xnli-sw-4' is \(3, 16\)"):
        EncoderStateStore.write(tmp_path, ids, [*states[:4], torch.zeros(3, 16)])
    with pytest.raises(ValueError, match="not finite in float16"):
        EncoderStateStore.write(tmp_path, ids[:1], [torch.full((2, 32), 1e6)])
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(FileNotFoundError, match=r"index\.json is missing"):
        EncoderStateStore(tmp_path)

    EncoderStateStore.write(tmp_path, ids, states, shard_size=2)
    smaller = EncoderStateStore.write(tmp_path, ids[:2], states[:2], shard_size=2)
    # The old shards are gone and no temporary file is left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index.json", "shard-00000.safetensors"]
    assert len(smaller) == 2 and "xnli-sw-3" not in EncoderStateStore(tmp_path)


def test_stored_states_drive_a_flare_mt_adapter(nllb, tokenizer, tmp_path):
    ids = [f"sw-{index}" for index in range(3)]
    store = EncoderStateStore.write(tmp_path, ids, encoder_states(nllb, tokenizer, SWAHILI[:3], "swh_Latn"))
    source_embeds, source_attention_mask = store.batch(ids)

    llama = build("llama")
    flare = flare_xlt.get_flare_model(llama, flare_xlt.FlareConfig(mt_source_dim=store.d_model))
    randomize_lora(flare)  # LoRA B starts at zero, which would hide the source entirely
    input_ids = torch.randint(3, 96, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)

    output = flare(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=input_ids,
        source_embeds=source_embeds,
        source_attention_mask=source_attention_mask,
    )
    assert torch.isfinite(output.loss)
    output.loss.backward()
    gradient = flare.lora_mt_projection["flare"].weight.grad
    assert gradient is not None and gradient.abs().sum() > 0
    with torch.no_grad():
        plain = flare(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(output.logits.detach(), plain, atol=1e-4)
