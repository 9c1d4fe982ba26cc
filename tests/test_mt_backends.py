"""MT backends: ctranslate2 against transformers token for token on tiny random NLLB (M2M100) and MADLAD (T5) models,
the command backend with a stub program and with real Apertium, QA projection through each backend, resume after a
kill, translation sharded over two processes, and XNLI's own translated train split."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, build_nllb
from test_distributed import free_port
from test_resume import cached_rows, kill_at_cached_rows, run_again

from flare_xlt import cli
from flare_xlt.mt import GenerationSettings, TranslationInputWarning, Translator
from flare_xlt.mt.backends import CommandTranslationError, convert_to_ctranslate2
from flare_xlt.mt.data import translate_task
from flare_xlt.mt.projection import project_qa_records
from flare_xlt.tasks import TYDIQA, XNLI, load_record_file
from flare_xlt.tasks.sources import load_xnli_translated_train

GREEDY = GenerationSettings(num_beams=1, max_input_length=48, max_new_tokens=12)
TEXTS = [
    "The cat sleeps on the warm mat.",
    "He bought three apples at the market.",
    "An animal is resting.",
    "The food was delicious and the staff were friendly.",
    "Where is the river?",
    "good food",
]
STUB = [sys.executable, str(Path(__file__).with_name("mt_command_stub.py"))]
MT_FIXTURES = Path(__file__).with_name("mt_fixtures")


def stub(mode: str, seconds: float | None = None) -> str:
    return " ".join([*STUB, mode, *([str(seconds)] if seconds is not None else [])])


def larger_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights at the default 0.02 scale make a decoder emit the same tokens for every input, which would hide
    a backend that ignored its input; with matrices at 0.5 (norms and biases kept) the outputs differ by text."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def build_madlad(corpus: list[str]):
    """A tiny random T5 (MADLAD-400's architecture) with a BPE tokenizer holding `<2xx>` target tokens as MADLAD's
    does; ids 0-2 are <pad>, </s>, <unk> as in T5."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<pad>", "</s>", "<unk>", "<2en>", "<2sw>", "<2es>"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", additional_special_tokens=specials
    )
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return tokenizer, larger_weights(T5ForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"nllb" | "madlad": (checkpoint folder, CTranslate2 folder)}."""
    corpus = [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.rglob("*")) if path.is_file()]
    root = tmp_path_factory.mktemp("mt_backends")
    folders = {}
    for name, (tokenizer, model) in {
        "nllb": build_nllb(corpus, vocab_size=400),
        "madlad": build_madlad(corpus),
    }.items():
        larger_weights(model).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = (root / name, convert_to_ctranslate2(str(root / name), root / f"{name}-ct2"))
    return folders


def generated_tokens(translator: Translator, texts: list[str]) -> dict[tuple, list[int]]:
    """Each input's generated ids without special tokens (decoder start, language token, </s>, padding)."""
    recorded = {}
    generate = translator.backend.generate

    def record(batch, target):
        outputs = generate(batch, target)
        recorded.update(zip(map(tuple, batch), outputs, strict=True))
        return outputs

    translator.backend.generate = record
    translator.translate(texts, "en", "sw")
    specials = set(translator.tokenizer.all_special_ids)
    return {key: [token for token in ids if token not in specials] for key, ids in recorded.items()}


@pytest.mark.parametrize("kind", ["nllb", "madlad"])
def test_ctranslate2_float32_generates_the_tokens_of_transformers(models, kind):
    checkpoint, converted = models[kind]
    reference = Translator(checkpoint, GREEDY, device="cpu", progress=False)
    fast = Translator(converted, GREEDY, device="cpu", dtype="float32", backend="ctranslate2", progress=False)
    assert fast.backend.scheme == reference.backend.scheme == kind
    expected, got = generated_tokens(reference, TEXTS), generated_tokens(fast, TEXTS)
    assert got == expected and len(expected) == len(TEXTS)
    assert len({tuple(ids) for ids in expected.values()}) > 1  # the outputs depend on the input
    assert sum(map(len, expected.values())) > 3 * len(TEXTS)
    assert fast.translate(TEXTS, "en", "sw")[0] == reference.translate(TEXTS, "en", "sw")[0]


def test_madlad_takes_the_target_token_in_front_of_the_source(models):
    translator = Translator(models["madlad"][0], GREEDY, device="cpu", progress=False)
    assert translator.backend.codes("en", "sw") == ("<2en>", "<2sw>")
    seen = []
    generate = translator.backend.generate
    translator.backend.generate = lambda batch, target: seen.extend(batch) or generate(batch, target)
    translator.translate(["good food"], "en", "sw")
    assert translator.tokenizer.convert_ids_to_tokens(seen[0])[0] == "<2sw>"
    with pytest.raises(ValueError, match=r"has no language token '<2fr>'"):
        translator.translate(["good food"], "en", "fr")
    with pytest.raises(ValueError, match=r"Unknown language code 'xx'; valid choices: ace, ar"):
        translator.translate(["good food"], "en", "xx")


def test_cache_key_holds_backend_dtype_and_settings(models, tmp_path):
    checkpoint, converted = models["nllb"]
    cache = tmp_path / "cache.sqlite"

    def counts(model: Path, **options) -> tuple[int, int]:
        translator = Translator(model, GREEDY, cache=cache, device="cpu", progress=False, **options)
        report = translator.translate(TEXTS, "en", "sw")[1]
        return report.cached, report.translated

    assert counts(checkpoint, dtype="float32") == (0, 6)
    assert counts(checkpoint, dtype="float32") == (6, 0)
    assert counts(checkpoint, dtype="bfloat16") == (0, 6)
    assert counts(converted, backend="ctranslate2", dtype="float32") == (0, 6)
    assert counts(converted, backend="ctranslate2", dtype="int8") == (0, 6)
    assert counts(converted, backend="ctranslate2", dtype="int8") == (6, 0)
    with pytest.raises(ValueError, match=r"Unknown dtype 'int8' for the transformers backend; valid choices: auto"):
        Translator(checkpoint, dtype="int8")
    with pytest.raises(ValueError, match=r"Unknown backend 'vllm'; valid choices: transformers, ctranslate2, command"):
        Translator(checkpoint, backend="vllm")


def test_a_checkpoint_is_converted_once_and_reused(models, tmp_path):
    checkpoint, _ = models["nllb"]
    converted = tmp_path / "converted"
    first = Translator(checkpoint, GREEDY, backend="ctranslate2", converted=converted, device="cpu", progress=False)
    stamp = (converted / "model.bin").stat().st_mtime_ns
    again = Translator(checkpoint, GREEDY, backend="ctranslate2", converted=converted, device="cpu", progress=False)
    assert (converted / "model.bin").stat().st_mtime_ns == stamp and (converted / "tokenizer_config.json").is_file()
    assert again.translate(TEXTS, "en", "sw")[0] == first.translate(TEXTS, "en", "sw")[0]


def command_translator(command: str, cache: Path | None = None, **options) -> Translator:
    return Translator(backend="command", command=command, cache=cache, progress=False, **options)


def test_command_backend_translates_line_by_line_in_chunks(tmp_path):
    translator = command_translator(stub("upper"), tmp_path / "cache.sqlite", chunk_size=2)
    texts = ["good food", "", "bad\nservice", "good food", "open at nine", "bad\r\nservice", "x"]
    with pytest.warns(TranslationInputWarning, match=r"^2 of 5 texts to translate contain line breaks"):
        translations, report = translator.translate(texts, "es", "en")
    assert translations == ["GOOD FOOD", "", "BAD SERVICE", "GOOD FOOD", "OPEN AT NINE", "BAD SERVICE", "X"]
    assert (report.unique, report.translated, report.line_breaks) == (5, 5, 2)
    assert report.summary().endswith("2 with line breaks joined")
    assert translator.translate(texts, "es", "en")[1].cached == 5
    assert command_translator(stub("upper"), tmp_path / "cache.sqlite").translate(texts, "es", "de")[1].cached == 0


def test_command_failures_name_the_command_and_keep_finished_chunks(tmp_path):
    cache = tmp_path / "cache.sqlite"
    texts = ["one", "two", "three", "FAIL four", "five"]
    with pytest.raises(CommandTranslationError, match=r"failed on texts 3-4 of 5 with exit status 3: stub: cannot"):
        command_translator(stub("fail"), cache, chunk_size=2).translate(texts, "es", "en")
    translator = command_translator(stub("fail"), cache, chunk_size=2)
    with pytest.raises(CommandTranslationError):
        translator.translate(texts, "es", "en")
    with sqlite3.connect(cache) as database:
        assert sorted(row[0] for row in database.execute("SELECT source FROM translations")) == ["one", "two"]
    database.close()
    with pytest.raises(CommandTranslationError, match=r"wrote 2 lines for the 3 lines of texts 1-3 of 3; it must"):
        command_translator(stub("short")).translate(["a", "b", "c"], "es", "en")
    with pytest.raises(CommandTranslationError, match=r"did not finish texts 1-1 of 1 within 0.5 s"):
        command_translator(stub("hang"), command_timeout=0.5).translate(["a"], "es", "en")
    with pytest.raises(CommandTranslationError, match=r"'no-such-mt-program' could not start"):
        command_translator("no-such-mt-program").translate(["a"], "es", "en")


APERTIUM = (
    shutil.which("apertium")
    and "spa-eng" in subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout.split()
)
needs_apertium = pytest.mark.skipif(
    not APERTIUM and os.environ.get("CI") != "true",
    reason="apertium is not installed (make test installs it: apt-get install apertium apertium-eng-spa)",
)


@needs_apertium
def test_apertium_translates_spanish_and_keeps_the_markers():
    assert APERTIUM, "CI must have Apertium's spa-eng: `make apertium` installs it"
    translator = command_translator("apertium spa-eng")
    translations, _ = translator.translate(["El gato está durmiendo en la casa.", "El perro come pan."], "es", "en")
    assert translations == ["The cat is sleeping in the house.", "The dog eats bread."]
    context = "El perro come pan en la casa de Juan."
    records = [
        {
            "id": "q1",
            "question": "¿Dónde come el perro?",
            "context": context,
            "answers": {"text": ["la casa"], "answer_start": [context.index("la casa")]},
        }
    ]
    projected, failed, stats = project_qa_records(
        records, lambda batch: translator.translate(batch, "es", "en")[0], "en"
    )
    # Apertium keeps the brackets in place and translates the words inside them.
    assert (stats.markers, failed) == (1, [])
    assert projected[0]["context"] == "The dog eats bread in the house of Juan."
    assert projected[0]["answers"] == {"text": ["the house"], "answer_start": [22]}


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2", "command"])
def test_qa_projection_counts_marker_survival_through_every_backend(models, backend, tmp_path):
    checkpoint, converted = models["nllb"]
    options = {
        "transformers": {"model": checkpoint},
        "ctranslate2": {"model": converted, "backend": "ctranslate2"},
        "command": {"backend": "command", "command": stub("upper")},
    }[backend]
    translator = Translator(settings=GREEDY, device="cpu", progress=False, **options)
    report = translate_task(TYDIQA, ["train"], "en", "sw", translator, tmp_path, data=FIXTURES / "tydiqa")
    split = report["splits"]["train"]
    stats = split["projection"]
    assert stats["total"] == 2 == stats["markers"] + stats["exact_fallback"] + stats["fuzzy_fallback"] + stats["failed"]
    kept = load_record_file(TYDIQA, tmp_path / "tydiqa_train_en-sw.jsonl") if split["kept"] else []
    assert len(kept) == split["kept"] == 2 - split["dropped"]
    if backend == "command":  # upper-casing keeps every marker: all projected through them, answers upper-cased
        assert stats["markers"] == 2 and all(r["answers"]["text"][0].isupper() for r in kept)


def translate_options(backend: str, models: dict, source: Path, output: Path, cache: Path) -> dict:
    options = {"task": "xnli", "src": "en", "tgt": "es", "input": source, "output": output, "cache": cache}
    if backend == "ctranslate2":
        options |= {"backend": backend, "model": models["nllb"][1], "num_beams": 1, "max_new_tokens": 12}
        return options | {
            "tokens_per_batch": 16,
            "device": "cpu",
        }  # about one text per batch: many stores to kill between
    return options | {"backend": backend, "command": stub("upper", 0.1), "chunk_size": 3}


def command_line(options: dict) -> list[str]:
    return [sys.executable, "-m", "flare_xlt.cli", "translate", *(f"--{key}={value}" for key, value in options.items())]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ctranslate2", "command"])
def test_killed_translation_resumes_through_the_backend(models, backend, tmp_path, capsys):
    """SIGKILL part-way, run again: the cache is reused and the output is that of an uninterrupted run. (The
    transformers backend: test_resume.py.)"""
    rows = [
        {"id": f"r{i}", "premise": f"The cat {i} sleeps on mat {i % 7}.", "hypothesis": "An animal rests.", "label": 0}
        for i in range(40)
    ]
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    distinct = len({row[field] for row in rows for field in ("premise", "hypothesis")})
    output, cache = tmp_path / "killed" / "train_en-es.jsonl", tmp_path / "killed" / "cache.sqlite"
    options = translate_options(backend, models, source, output, cache)
    stored = kill_at_cached_rows(command_line(options), cache, 6)
    assert 6 <= stored < distinct and not output.exists()
    printed = run_again(command_line(options), capsys)
    summary = json.loads(printed[printed.index("{") :])["translation"]
    from_cache = int(summary.split(" from the cache")[0].rsplit(" ", 1)[1])
    assert stored <= from_cache < distinct and cached_rows(cache) == distinct
    reference = tmp_path / "reference" / "train_en-es.jsonl"
    cli.translate(**translate_options(backend, models, source, reference, tmp_path / "reference" / "cache.sqlite"))
    assert output.read_bytes() == reference.read_bytes()


def test_two_processes_translate_what_one_does(models, tmp_path):
    """torchrun with two gloo processes: the texts are split, one cache and one output, equal to a single process."""
    options = {"task": "xnli", "tgt": "sw", "splits": ["validation", "test"], "data": str(FIXTURES / "XNLI-1.0")}
    options |= {"model": str(models["nllb"][0]), "num_beams": 1, "max_new_tokens": 12, "device": "cpu"}
    options |= {"tokens_per_batch": 64}
    cli.translate(**options, output=tmp_path / "one")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_port", str(free_port()), "-m", "flare_xlt.cli", "translate"]
    arguments = [f"--{key}={value}" for key, value in options.items() if key != "splits"]
    arguments += ["--splits=[validation, test]", f"--output={tmp_path / 'two'}"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run([*launcher, *arguments], env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count('"task"') == 1  # one process prints the summary
    report = json.loads(finished.stdout[finished.stdout.index("{") :])
    assert report["translation"].startswith("12 texts: 6 distinct") and ", 6 translated" in report["translation"]
    outputs = {}
    for name in ("one", "two"):
        outputs[name] = {path.name: path.read_bytes() for path in (tmp_path / name).glob("*.jsonl")}
        assert cached_rows(tmp_path / name / "translation_cache.sqlite") == 6
    assert outputs["two"] == outputs["one"] and len(outputs["one"]) == 2


def test_xnli_train_from_the_dataset_own_translation(tmp_path, capsys):
    data = MT_FIXTURES / "XNLI-MT-1.0"
    cli.translate(tgt="sw", task="xnli", splits=["train"], data=str(data), output=tmp_path, dataset_translation=True)
    swahili = load_record_file(XNLI, tmp_path / "xnli_train_en-sw.jsonl")
    english = load_xnli_translated_train("en", str(data))
    assert [r["id"] for r in swahili] == [r["id"] for r in english] == ["train-0", "train-1", "train-2"]
    assert [r["label"] for r in swahili] == [r["label"] for r in english] == [0, 1, 2]
    assert swahili[0]["premise"] == "Paka analala kwenye mkeka." and swahili[0]["language"] == "sw"
    assert "XNLI's own machine-translated train split" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Only XNLI ships translated training data"):
        cli.translate(tgt="id", task="nusax", splits=["train"], output=tmp_path, dataset_translation=True)
