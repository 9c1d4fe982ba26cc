"""The library on real assets: multilingual-e5-small (XLM-R SentencePiece), Gemma-3-270m (Gemma 3 tokenizer and
cache), real parallel Bible text (benchmarks/real). `make real-assets` installs them outside the repository; without
them these tests skip locally and fail in CI (CI=true)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

from benchmarks.real import assets, bible
from flare_xlt import FlareConfig, FlareModel, get_flare_model
from flare_xlt.adapter.token_pairing import align_tokens, prompt_before_answer
from flare_xlt.tasks import PairedCollator, TaskEncoder, get_task, pair_views

IN_CI = os.environ.get("CI") == "true"
CANON = bible.load_canon_design()
TASK = bible.library_task(CANON.spec, ["en", "sw", "id"])
# Genesis (law and history) and John (New Testament): two classes, read fast.
BOOKS = [1, 43]


def require(locate):
    try:
        return locate()
    except assets.MissingAsset as error:
        if IN_CI:
            pytest.fail(f"CI must have the real assets (`make real-assets`): {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def verses() -> dict[str, list[tuple[tuple, str]]]:
    """English, Swahili and Indonesian text of the same verses, in a fixed order."""
    reader = bible.Bible(require(assets.bible_db))
    texts = {language: reader.verses(language, BOOKS) for language in ("en", "sw", "id")}
    keys = sorted(key for key in texts["en"] if all(key in texts[other] for other in ("sw", "id")))
    law, gospel = [key for key in keys if key[0] == 1], [key for key in keys if key[0] == 43]
    keys = [key for both in zip(law, gospel, strict=False) for key in both][:120]  # alternating labels
    return {language: [(key, texts[language][key]) for key in keys] for language in texts}


def pairs_of(verses, target: str, count: int, start: int = 0) -> list[dict]:
    def records(language):
        return [
            {
                "id": bible.verse_id(key),
                "language": language,
                "text": text,
                "label": CANON.labels.index(CANON.label_of(key[0])),
            }
            for key, text in verses[language][start : start + count]
        ]

    return pair_views(TASK, records(target), records("en"))


@pytest.fixture(scope="module")
def e5_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(require(assets.e5_folder))


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(require(assets.gemma_folder))
    tokenizer.padding_side = "left"
    return tokenizer


def test_bible_translations_are_what_the_mapping_says(verses):
    """The codes were read from the data; each is checked against its name of Genesis, and the verses are parallel."""
    reader = bible.Bible(require(assets.bible_db))
    assert {code for code, _, _ in bible.TRANSLATIONS.values()} <= set(reader.codes())
    john_3_16 = {language: reader.verses(language, [43])[(43, 3, 16)] for language in ("en", "sw", "id", "es")}
    assert john_3_16["en"].startswith("For God so loved the world")
    assert john_3_16["sw"].startswith("Kwa maana jinsi hii Mungu aliupenda ulimwengu")
    assert john_3_16["id"].startswith("Karena begitu besar kasih Allah akan dunia ini")
    assert john_3_16["es"].startswith("Porque de tal manera amó Dios al mundo")
    assert bible.clean("[even] an offering (यह. 40:11) made*") == "even an offering made"


def test_e5_tokenizer_through_the_task_encoder_and_pairing(e5_tokenizer, verses):
    """XLM-R SentencePiece: <s> text </s>, the text comes back from the ids, and FLARE pairs the k-th real Swahili
    token with the k-th real English token on right-padded batches."""
    pairs = pairs_of(verses, "sw", 6)
    encoder = TaskEncoder(TASK, e5_tokenizer, "encoder", view="paired", max_length=64)
    features, report, _ = encoder.encode(pairs)
    assert report.examples == 6
    for feature, pair in zip(features, pairs, strict=True):
        for ids, text in ((feature["input_ids"], pair["text"]), (feature["source_input_ids"], pair["source_text"])):
            assert ids[0] == e5_tokenizer.bos_token_id and ids[-1] == e5_tokenizer.eos_token_id
            if len(ids) < 64:  # not truncated: SentencePiece gives the text back
                assert e5_tokenizer.decode(ids, skip_special_tokens=True) == text
            assert e5_tokenizer.unk_token_id not in ids
        assert feature["labels"] == pair["label"]
    batch = PairedCollator.for_tokenizer(e5_tokenizer)(features)
    assert e5_tokenizer.padding_side == "right"
    target_mask, source_mask = batch["attention_mask"], batch["source_attention_mask"]
    for pairing in ("start", "end"):
        alignment = align_tokens(source_mask, target_mask, target_mask, target_mask.shape[1], pairing=pairing)
        for row in range(len(features)):
            target_real, source_real = int(target_mask[row].sum()), int(source_mask[row].sum())
            paired = alignment.source_position[row][alignment.has_source[row]].tolist()
            count = min(target_real, source_real)
            offset = 0 if pairing == "start" else max(source_real - target_real, 0)
            assert paired == list(range(offset, offset + count))  # right padding: real tokens come first
            # the k-th real target token has a partner exactly when the source has a k-th (start) token
            assert int(alignment.has_source[row].sum()) == count


def test_gemma_tokenizer_through_the_task_encoder(gemma_tokenizer, verses):
    """Gemma 3: <bos> prompt, then the label word and <eos> carry the only labels; the generation prompt is exactly
    the training sequence without its answer, and the pairing's prompt mask covers the prompt alone."""
    pairs = pairs_of(verses, "id", 4)
    training = TaskEncoder(TASK, gemma_tokenizer, "decoder", view="paired", max_length=96)
    generation = TaskEncoder(TASK, gemma_tokenizer, "decoder", view="paired", max_length=96, for_generation=True)
    features, _, _ = training.encode(pairs)
    prompts, _, _ = generation.encode(pairs)
    for feature, prompt, pair in zip(features, prompts, pairs, strict=True):
        ids, labels = feature["input_ids"], feature["labels"]
        assert ids[0] == gemma_tokenizer.bos_token_id and ids[-1] == gemma_tokenizer.eos_token_id
        answer = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        assert gemma_tokenizer.decode(answer[:-1]).strip() == TASK.label_names[pair["label"]]
        assert ids[: len(prompt["input_ids"])] == prompt["input_ids"]
        assert len(ids) == len(prompt["input_ids"]) + len(answer)
        assert gemma_tokenizer.decode(prompt["input_ids"], skip_special_tokens=True) == TASK.decoder_template.format(
            text=pair["text"]
        )
        assert gemma_tokenizer.decode(prompt["source_input_ids"], skip_special_tokens=True).startswith(
            "Verse: " + pair["source_text"][:20]
        )
    batch = PairedCollator.for_tokenizer(gemma_tokenizer)(features)
    mask, labels = batch["attention_mask"], batch["labels"]
    prompt_mask = prompt_before_answer(mask.bool(), labels)
    for row, prompt in enumerate(prompts):
        assert int(prompt_mask[row].sum()) == len(prompt["input_ids"])  # left padding, the answer excluded


@pytest.fixture(scope="module")
def e5_classifier():
    from transformers import AutoModelForSequenceClassification

    folder = require(assets.e5_folder)

    def build():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(TASK.label_names))

    return build


def test_e5_embeddings_find_the_parallel_verse(e5_tokenizer, verses):
    """The dequantised checkpoint is multilingual-e5-small: each of 32 Swahili verses finds its English verse by
    the cosine of mean-pooled embeddings (the reference reports 0.905 top-1 on 200 verses)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(require(assets.e5_folder)).eval()

    def embed(texts):
        batch = e5_tokenizer(["passage: " + text for text in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1)
        return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)

    english = embed([text for _, text in verses["en"][:32]])
    swahili = embed([text for _, text in verses["sw"][:32]])
    top1 = (swahili @ english.T).argmax(-1).eq(torch.arange(32)).float().mean().item()
    assert top1 >= 0.8, top1


@pytest.fixture(scope="module")
def trained_e5_flare(e5_classifier, e5_tokenizer, verses):
    """A few FLARE steps on Swahili verses fused with their English source; the held-out loss before and after."""
    encoder = TaskEncoder(TASK, e5_tokenizer, "encoder", view="paired", max_length=48)
    collate = PairedCollator.for_tokenizer(e5_tokenizer)
    train = collate(encoder.encode(pairs_of(verses, "sw", 48))[0])
    held_out = collate(encoder.encode(pairs_of(verses, "sw", 16, start=96))[0])
    config = FlareConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    flare = get_flare_model(e5_classifier(), config)

    def loss() -> float:
        flare.eval()
        with torch.no_grad():
            return flare(**held_out).loss.item()

    before = loss()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in flare.parameters() if p.requires_grad], lr=2e-3)
    flare.train()
    for step in range(6):
        rows = slice(8 * step, 8 * step + 8)
        optimizer.zero_grad()
        flare(**{key: value[rows] for key, value in train.items()}).loss.backward()
        optimizer.step()
    return flare, held_out, before, loss()


def test_flare_steps_on_e5_lower_the_held_out_loss(trained_e5_flare):
    flare, _, before, after = trained_e5_flare
    assert after < before - 0.05, (before, after)
    moved = [name for name, p in flare.named_parameters() if "lora_B" in name and p.abs().sum() > 0]
    assert moved, "FLARE's LoRA B matrices did not move"


def test_flare_adapter_round_trip_is_bitwise_on_e5(trained_e5_flare, e5_classifier, tmp_path):
    flare, held_out, _, _ = trained_e5_flare
    flare.eval()
    flare.save_pretrained(tmp_path / "adapter")
    restored = FlareModel.from_pretrained(e5_classifier(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(restored(**held_out).logits, flare(**held_out).logits)
        plain = restored(input_ids=held_out["input_ids"], attention_mask=held_out["attention_mask"]).logits
    assert not torch.equal(plain, flare(**held_out).logits)  # the source is fused: without it the output differs


def test_gemma_cached_generation_equals_teacher_forcing(gemma_tokenizer, verses):
    """Gemma-3-270m with FLARE on q_proj/v_proj (random LoRA weights, so fusion matters), batch 1: the logits of
    each greedy generation step, generated tokens fused with their English partners, equal those of one
    teacher-forced forward over prompt + generated tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(require(assets.gemma_folder), dtype=torch.float32).eval()
    flare = get_flare_model(model, FlareConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in flare.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    new = 4
    # Start pairing fuses a generated token only where the English prompt is longer than the target prompt (real
    # translations are about as long as their source): the English side here holds the verse and the next one, so
    # every generated token has an English partner and the cached steps fuse.
    encoder = TaskEncoder(TASK, gemma_tokenizer, "decoder", view="target", max_length=80, for_generation=True)
    feature = encoder.encode(pairs_of(verses, "sw", 1, start=5))[0][0]
    english = " ".join(text for _, text in verses["en"][5:7])
    source_ids = gemma_tokenizer(TASK.decoder_template.format(text=english))["input_ids"]
    assert len(source_ids) >= len(feature["input_ids"]) + new
    prompt = torch.tensor([feature["input_ids"]])
    source = torch.tensor([source_ids])
    with torch.no_grad():
        out = flare.generate(
            input_ids=prompt,
            source_input_ids=source,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=gemma_tokenizer.pad_token_id,
        )
        steps = torch.stack(out.logits, 1)  # (1, new, V)
        sequence = out.sequences
        labels = torch.cat([torch.full_like(prompt, -100), sequence[:, prompt.shape[1] :]], 1)
        forced = flare(input_ids=sequence, labels=labels, source_input_ids=source).logits[:, prompt.shape[1] - 1 : -1]
        unfused = flare(input_ids=sequence, labels=labels).logits[:, prompt.shape[1] - 1 : -1]
    assert torch.equal(forced.argmax(-1), sequence[:, prompt.shape[1] :])
    torch.testing.assert_close(steps, forced, atol=2e-3, rtol=1e-4)
    assert (unfused - forced).abs().max() > 0.1  # the English source changes the logits: the check can fail


def test_bible_canon_is_balanced_parallel_and_split_by_chapter(tmp_path):
    """The task's data: balanced classes, the same verses in every language, no chapter in two splits; oracle MT is
    the human translation and degraded MT changes about the demo's share of words."""
    from flare_xlt.mt.data import output_name
    from flare_xlt.tasks import load_record_file

    reader = bible.Bible(require(assets.bible_db))
    sizes = bible.TaskSizes(train_per_class=20, validation_per_class=5, test_per_class=10)
    built = bible.build_task(reader, ["sw"], tmp_path, sizes)
    task = get_task(built.task_file)
    records = {
        (language, split): load_record_file(task, built.data / language / f"{split}.jsonl")
        for language in ("en", "sw")
        for split in ("train", "validation", "test")
    }
    chapters = {}
    for split, count in (("train", 20), ("validation", 5), ("test", 10)):
        english, swahili = records["en", split], records["sw", split]
        assert [r["id"] for r in english] == [r["id"] for r in swahili]
        assert [r["label"] for r in english] == [r["label"] for r in swahili]
        assert sorted(r["label"] for r in english) == sorted(list(range(len(CANON.labels))) * count)
        chapters[split] = {tuple(r["id"].split("-")[:2]) for r in english}
    assert not chapters["train"] & chapters["test"] and not chapters["validation"] & chapters["test"]
    assert not chapters["train"] & chapters["validation"]

    bible.write_translations(built, {"sw": bible.MTCondition("oracle")}, tmp_path / "oracle")
    oracle = load_record_file(task, tmp_path / "oracle" / output_name(task, "test", "sw", "en"))
    assert [r["text"] for r in oracle] == [r["text"] for r in records["en", "test"]]
    bible.write_translations(built, {"sw": bible.MTCondition("degraded", 0.2)}, tmp_path / "degraded")
    degraded = load_record_file(task, tmp_path / "degraded" / output_name(task, "train", "en", "sw"))
    texts = zip((r["text"] for r in degraded), records["sw", "train"], strict=True)
    words = [(a.split(), b["text"].split()) for a, b in texts]
    kept = sum(sum((Counter(a) & Counter(b)).values()) for a, b in words) / sum(len(b) for _, b in words)
    assert 0.72 < kept < 0.88, kept  # about 1 - 0.2 of the words survive (0.1 dropped, 0.1 replaced)
