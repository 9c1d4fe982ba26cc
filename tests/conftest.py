"""Tiny random transformers models built from configs (nothing is downloaded), shared by the test matrix."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BloomConfig,
    BloomForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MT5Config,
    MT5ForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    XGLMConfig,
    XGLMForCausalLM,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
)

VOCAB = 96
PAD = 0


DECODER_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=PAD,
    bos_token_id=1,
    eos_token_id=2,
)
ENCODER_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=80,
    pad_token_id=PAD,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


BUILDERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**DECODER_SIZES)),
    "gemma2": lambda: Gemma2ForCausalLM(
        Gemma2Config(**DECODER_SIZES, head_dim=8, attn_implementation="eager", sliding_window=16)
    ),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER_SIZES)),
    # Causal decoders whose attention modules carry no is_causal flag.
    "xglm": lambda: XGLMForCausalLM(
        XGLMConfig(
            vocab_size=VOCAB,
            d_model=32,
            ffn_dim=64,
            num_layers=2,
            attention_heads=4,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=PAD,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "bloom": lambda: BloomForCausalLM(
        BloomConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            n_layer=2,
            n_head=4,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=PAD,
            bos_token_id=1,
            eos_token_id=2,
        )
    ),
    "xlmr-cls": lambda: XLMRobertaForSequenceClassification(XLMRobertaConfig(**ENCODER_SIZES, num_labels=3)),
    "xlmr-qa": lambda: XLMRobertaForQuestionAnswering(XLMRobertaConfig(**ENCODER_SIZES)),
    "bert-cls": lambda: BertForSequenceClassification(BertConfig(**ENCODER_SIZES, num_labels=3)),
    "mt5": lambda: MT5ForConditionalGeneration(
        MT5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=PAD,
            eos_token_id=2,
            decoder_start_token_id=PAD,
        )
    ),
}
DECODERS = ("llama", "gemma2", "qwen2", "xglm", "bloom")
# FlareConfig settings a model needs beyond the defaults: PEFT knows no default LoRA targets for XGLM, and BLOOM
# projects query, key and value in one Linear, which FLARE fuses whole (the default fuses q and v projections).
ADAPTER_SETTINGS = {"xglm": {"target_modules": ["q_proj", "v_proj"]}, "bloom": {"fusion_modules": ["query_key_value"]}}
ENCODERS = ("xlmr-cls", "xlmr-qa", "bert-cls")
HEADS = {"xlmr-cls": ["classifier"], "xlmr-qa": ["qa_outputs"], "bert-cls": ["classifier"]}


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[kind]().eval()


def randomize_lora(model: torch.nn.Module, seed: int = 1, scale: float = 0.3, adapter: str = "flare") -> None:
    """LoRA B starts at zero, which would hide every fusion effect: give one adapter's weights random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name and f".{adapter}." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def batch_for(kind: str, batch: int = 2, target_length: int = 7, source_length: int = 6, seed: int = 3) -> dict:
    """Random target/source ids with ragged lengths, padded on the model's side (left for decoders)."""
    generator = torch.Generator().manual_seed(seed)

    def padded(length: int, real_lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for row, real in enumerate(real_lengths):
            span = slice(length - real, length) if kind in DECODERS else slice(0, real)
            mask[row, span] = 1
        return ids.masked_fill(mask == 0, PAD), mask

    target_ids, target_mask = padded(target_length, [target_length - row for row in range(batch)])
    source_ids, source_mask = padded(source_length, [source_length - (batch - 1 - row) for row in range(batch)])
    return {
        "input_ids": target_ids,
        "attention_mask": target_mask,
        "source_input_ids": source_ids,
        "source_attention_mask": source_mask,
    }


def labels_for(kind: str, inputs: dict) -> dict:
    batch = inputs["input_ids"].shape[0]
    if kind in DECODERS:
        return {"labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}
    if kind == "xlmr-qa":
        return {"start_positions": torch.tensor([1] * batch), "end_positions": torch.tensor([3] * batch)}
    if kind == "mt5":
        return {"labels": torch.randint(3, VOCAB, (batch, 4), generator=torch.Generator().manual_seed(5))}
    return {"labels": torch.arange(batch) % 3}


@pytest.fixture
def one_thread():
    """Torch on one thread while the test runs: a tiny random model's near-tied logits (a decoder's generations) can
    differ between thread counts, and goldens must not depend on the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unload_gives_original_modules(monkeypatch):
    """PEFT 0.22's unload(): without merging, a modules_to_save wrapper gives back its original module, not the
    trained copy (PEFT 0.21 gives the copy)."""
    from peft.utils.other import ModulesToSaveWrapper

    installed = ModulesToSaveWrapper.unload_and_optionally_merge_module

    def unload(self, merge, safe_merge, adapter_names):
        return installed(self, merge, safe_merge, adapter_names) if merge else self.original_module

    monkeypatch.setattr(ModulesToSaveWrapper, "unload_and_optionally_merge_module", unload)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


def generate_fused(flare, inputs: dict, new_tokens: int, **kwargs):
    """generate() with the batch's source and exactly `new_tokens` new tokens, returning the output dict."""
    return flare.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        source_input_ids=inputs["source_input_ids"],
        source_attention_mask=inputs["source_attention_mask"],
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        return_dict_in_generate=True,
        pad_token_id=PAD,
        **kwargs,
    )


def teacher_forced_logits(flare, inputs: dict, sequences: torch.Tensor) -> torch.Tensor:
    """One fused forward over prompt + generated tokens of a decoder-only model (rows as in `sequences`)."""
    rows = sequences.shape[0] // inputs["input_ids"].shape[0]
    repeat = {key: value.repeat_interleave(rows, dim=0) for key, value in inputs.items()}
    new_tokens = sequences.shape[1] - inputs["input_ids"].shape[1]
    mask = torch.cat(
        [
            repeat["attention_mask"],
            torch.ones(sequences.shape[0], new_tokens, dtype=torch.long, device=sequences.device),
        ],
        1,
    )
    return flare(
        input_ids=sequences,
        attention_mask=mask,
        source_input_ids=repeat["source_input_ids"],
        source_attention_mask=repeat["source_attention_mask"],
    ).logits


FIXTURES = Path(__file__).parent / "fixtures"


def fixture_vocabulary(corpus: list[str], size: int, specials: list[str]) -> dict[str, int]:
    """A WordPiece vocabulary of the corpus, the same in every process: the special tokens, every character (alone and
    as a ##continuation), then whole words by frequency, ties alphabetical. (The tokenizers library's trainer breaks
    ties in hash-map order, which changes from process to process, and with it every id and every generated text.)"""
    from tokenizers import normalizers, pre_tokenizers

    normalizer, splitter = normalizers.NFC(), pre_tokenizers.BertPreTokenizer()
    words = Counter(word for text in corpus for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in words for character in word})
    pieces = [*specials, *characters, *(f"##{character}" for character in characters)]
    known = set(pieces)
    pieces += [word for word in sorted(words, key=lambda word: (-words[word], word)) if word not in known]
    return {piece: index for index, piece in enumerate(pieces[:size])}


def train_tokenizer(architecture: str = "encoder"):
    """A WordPiece tokenizer of the fixture texts: [CLS] a [SEP] b [SEP] for encoders (right padding), <s> a for
    decoders (left padding)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    corpus = [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.rglob("*")) if path.is_file()] + [
        "Premise Hypothesis Label Sentiment Context Question Answer entailment neutral contradiction negative positive"
    ]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    backend = Tokenizer(models.WordPiece(fixture_vocabulary(corpus, 600, specials), unk_token="[UNK]"))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    ids = {token: backend.token_to_id(token) for token in specials}
    if architecture == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            padding_side="right",
            model_input_names=["input_ids", "attention_mask"],
        )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ids["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def answer_tokens(feature: dict) -> list[int]:
    """The tokens of a decoder training feature that carry a label: the answer and EOS."""
    return [token for token, label in zip(feature["input_ids"], feature["labels"], strict=True) if label != -100]


def build_nllb(corpus: list[str], vocab_size: int = 300):
    """A tiny random M2M100 (NLLB's architecture) and the real NllbTokenizer over a BPE trained on `corpus`.

    Ids 0-3 are <s>, <pad>, </s>, <unk> as in NLLB; the FAIRSEQ language codes follow the vocabulary, so the model
    takes len(tokenizer). NllbTokenizer wants the merges as tuples.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    state = json.loads(bpe.to_str())["model"]
    tokenizer = NllbTokenizer(
        vocab=state["vocab"], merges=[tuple(merge) for merge in state["merges"]], src_lang="eng_Latn"
    )
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    return tokenizer, M2M100ForConditionalGeneration(config).eval()


NUSAX_DATA = str(FIXTURES / "nusax")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """Tiny encoder and decoder checkpoints with their tokenizers, and NusaX translations made by a tiny NLLB."""
    from transformers import LlamaConfig, LlamaForCausalLM, XLMRobertaConfig, XLMRobertaForMaskedLM

    from flare_xlt import cli
    from flare_xlt.mt import GenerationSettings, Translator
    from flare_xlt.mt.data import translate_task, write_records
    from flare_xlt.tasks import NUSAX, load_original_view

    root = tmp_path_factory.mktemp("workflow")
    torch.manual_seed(0)
    encoder_tokenizer = train_tokenizer("encoder")
    XLMRobertaForMaskedLM(
        XLMRobertaConfig(**{**ENCODER_SIZES, "vocab_size": len(encoder_tokenizer), "max_position_embeddings": 160})
    ).save_pretrained(root / "encoder")
    encoder_tokenizer.save_pretrained(root / "encoder")
    decoder_tokenizer = train_tokenizer("decoder")
    sizes = {
        **DECODER_SIZES,
        "vocab_size": len(decoder_tokenizer),
        "pad_token_id": decoder_tokenizer.pad_token_id,
        "bos_token_id": decoder_tokenizer.bos_token_id,
        "eos_token_id": decoder_tokenizer.eos_token_id,
    }
    LlamaForCausalLM(LlamaConfig(**sizes)).save_pretrained(root / "decoder")
    decoder_tokenizer.save_pretrained(root / "decoder")
    seq2seq_sizes = {
        "vocab_size": len(decoder_tokenizer),
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "dropout_rate": 0.0,
        "pad_token_id": decoder_tokenizer.pad_token_id,
        "eos_token_id": decoder_tokenizer.eos_token_id,
        "decoder_start_token_id": decoder_tokenizer.pad_token_id,
    }
    MT5ForConditionalGeneration(MT5Config(**seq2seq_sizes)).save_pretrained(root / "seq2seq")
    decoder_tokenizer.save_pretrained(root / "seq2seq")

    corpus = [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.rglob("*")) if path.is_file()]
    nllb_tokenizer, nllb = build_nllb(corpus, vocab_size=400)
    nllb.save_pretrained(root / "nllb")
    nllb_tokenizer.save_pretrained(root / "nllb")
    translator = Translator(root / "nllb", GenerationSettings(1, 48, 12), progress=False)
    translate_task(NUSAX, ["train"], "en", "id", translator, root / "translations", data=NUSAX_DATA)
    translate_task(NUSAX, ["test"], "id", "en", translator, root / "translations", data=NUSAX_DATA)
    translate_task(NUSAX, ["validation"], "en", "id", translator, root / "translations", data=NUSAX_DATA)
    write_records(root / "test_id.jsonl", load_original_view(NUSAX, "id", "test", NUSAX_DATA))
    for kind in ("encoder", "decoder", "seq2seq"):  # FLARE-MT states of the text each kind of model reads
        for split, records in (
            ("train", root / "translations" / "nusax_train_en-id.jsonl"),
            ("test", root / "test_id.jsonl"),
        ):
            cli.mt_states(
                input=records,
                language="id",
                output=root / "states" / kind / split,
                task="nusax",
                reader=str(root / kind),
                reader_max_length=48,
                model=str(root / "nllb"),
                device="cpu",
            )
    return root
