"""The NLLB translation pipeline on a tiny random M2M100 with a real NllbTokenizer built in-process."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FIXTURES, build_nllb
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

from flare_xlt.mt import NLLB_CODES, NLLB_FALLBACKS, FallbackLanguageWarning, GenerationSettings, Translator, nllb_code
from flare_xlt.mt.data import translate_splits, translate_task
from flare_xlt.tasks import NUSAX, TASKS, TYDIQA, XNLI, load_original_view, load_record_file, pair_views

GREEDY = GenerationSettings(num_beams=1, max_input_length=48, max_new_tokens=12)


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    """A tiny random M2M100 (NLLB's architecture) and an NllbTokenizer trained on the fixture texts, saved to disk."""
    corpus = [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.rglob("*")) if path.is_file()]
    tokenizer, model = build_nllb(corpus, vocab_size=400)
    directory = tmp_path_factory.mktemp("nllb")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_code_table_matches_the_nllb_tokenizer():
    assert set(NLLB_CODES.values()) | set(NLLB_FALLBACKS.values()) <= set(FAIRSEQ_LANGUAGE_CODES)
    for task in TASKS.values():
        for language in task.languages:
            assert language in NLLB_CODES or language in NLLB_FALLBACKS, (task.name, language)
    assert nllb_code("sw") == "swh_Latn" and nllb_code("zho_Hans") == "zho_Hans"


def test_fallback_languages_warn_and_unknown_codes_list_choices():
    with pytest.warns(FallbackLanguageWarning, match=r"Madurese \(mad\); using ind_Latn"):
        assert nllb_code("mad") == "ind_Latn"
    with pytest.raises(ValueError, match=r"Unknown language code 'xx'; valid choices: ace, ar, ban, bbc"):
        nllb_code("xx")


def test_task_split_end_to_end_in_the_tasks_format(nllb_dir, tmp_path):
    translator = Translator(nllb_dir, GREEDY, cache=tmp_path / "cache.sqlite", progress=False)
    report = translate_task(XNLI, ["validation", "test"], "en", "sw", translator, tmp_path, data=FIXTURES / "XNLI-1.0")
    assert report["splits"] == {"validation": {"records": 3}, "test": {"records": 3}}
    # The fixture's dev and test sets hold the same 3 sentence pairs: 12 texts, 6 distinct.
    assert report["translation"]["requested"] == 12 and report["translation"]["unique"] == 6
    translated = load_record_file(XNLI, tmp_path / "xnli_validation_en-sw.jsonl")
    assert [record["language"] for record in translated] == ["sw"] * 3
    english = load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0")
    pairs = pair_views(XNLI, translated, english)
    assert [pair["label"] for pair in pairs] == [0, 1, 2]
    assert (tmp_path / "xnli_report_validation-test_en-sw.json").is_file()


def test_dedup_cache_and_batching(nllb_dir, tmp_path):
    records = [
        {"id": str(i), "language": "en", "text": text, "label": i % 3}
        for i, text in enumerate(["good food", "bad service", "good food", "", "bad service", "open at nine"])
    ]
    splits = {"train": records[:4], "validation": records[4:]}
    translator = Translator(nllb_dir, GREEDY, cache=tmp_path / "cache.sqlite", progress=False)
    first, report = translate_splits(NUSAX, splits, translator, "en", "jav")
    # 6 texts: 1 empty, 3 distinct, 2 repeats (one across splits)
    counts = report["translation"]
    assert (counts["requested"], counts["empty"], counts["unique"]) == (6, 1, 3)
    assert report["translation"]["translated"] == 3 and report["translation"]["cached"] == 0
    assert first["train"][0]["text"] == first["train"][2]["text"] and first["train"][3]["text"] == ""
    assert first["validation"][0]["text"] == first["train"][1]["text"]

    again, report = translate_splits(NUSAX, splits, translator, "en", "jav")
    assert report["translation"]["cached"] == 3 and report["translation"]["translated"] == 0
    assert again == first

    one_by_one = Translator(nllb_dir, GREEDY, tokens_per_batch=1, progress=False)
    assert translate_splits(NUSAX, splits, one_by_one, "en", "jav")[0] == first


def test_qa_projection_counts_what_it_drops(nllb_dir, tmp_path):
    translator = Translator(nllb_dir, GREEDY, progress=False)
    report = translate_task(TYDIQA, ["train"], "en", "sw", translator, tmp_path, data=FIXTURES / "tydiqa")
    split = report["splits"]["train"]
    kept = load_record_file(TYDIQA, tmp_path / "tydiqa_train_en-sw.jsonl") if split["kept"] else []
    assert split["records"] == 2 and split["kept"] + split["dropped"] == 2 == split["projection"]["total"]
    assert len(kept) == split["kept"] and len(split["dropped_ids"]) == split["dropped"]


def test_translate_test_keeps_every_record_without_answers(nllb_dir, tmp_path):
    translator = Translator(nllb_dir, GREEDY, progress=False)
    report = translate_task(TYDIQA, ["test"], "sw", "en", translator, tmp_path, data=FIXTURES / "tydiqa")
    assert report["splits"] == {"test": {"records": 2}}
    english = load_record_file(TYDIQA, tmp_path / "tydiqa_test_sw-en.jsonl")
    swahili = load_original_view(TYDIQA, "sw", "validation", FIXTURES / "tydiqa")
    assert [r["id"] for r in english] == [r["id"] for r in swahili] and all("answers" not in r for r in english)
    pairs = pair_views(TYDIQA, swahili, english)  # the test set pairs whole: nothing filtered by projection
    assert [pair["answers"] for pair in pairs] == [r["answers"] for r in swahili]


def test_cli_translates_any_file_by_fields_and_writes_mt_states(nllb_dir, tmp_path, capsys):
    from flare_xlt import cli
    from flare_xlt.mt.states import EncoderStateStore

    rows = tmp_path / "reviews.csv"
    rows.write_text('id,stars,body\n1,5,"Great food, friendly staff"\n2,1,Cold and late\n')
    cli.translate(
        tgt="sw",
        fields=["body"],
        input=rows,
        output=tmp_path / "reviews_sw.jsonl",
        model=str(nllb_dir),
        num_beams=1,
        max_new_tokens=8,
        device="cpu",
    )
    translated = [json.loads(line) for line in (tmp_path / "reviews_sw.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stars"], r["language"]) for r in translated] == [("1", "5", "sw"), ("2", "1", "sw")]
    with pytest.raises(ValueError, match="exactly one of --task"):
        cli.translate(tgt="sw", input=rows, output=tmp_path / "x.jsonl", model=str(nllb_dir))

    cli.mt_states(
        input=tmp_path / "reviews_sw.jsonl",
        language="sw",
        output=tmp_path / "states",
        template="{body}",
        model=str(nllb_dir),
        device="cpu",
    )
    store = EncoderStateStore(tmp_path / "states")
    assert len(store) == 2 and store.d_model == 32 and store.get("1").shape[1] == 32
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "records": 2,
        "states": 2,
        "d_model": 32,
        "output": str(tmp_path / "states"),
    }
    with pytest.raises(ValueError, match=r"record 1 \(1\): the template needs field 'premise'"):
        cli.mt_states(
            input=tmp_path / "reviews_sw.jsonl",
            language="sw",
            output=tmp_path / "s2",
            template="{premise}",
            model=str(nllb_dir),
            device="cpu",
        )


def test_language_checks_come_before_any_work(nllb_dir, tmp_path):
    from flare_xlt import cli

    with pytest.raises(ValueError, match="has no language 'jav'; valid choices: ar, bg"):
        cli.translate(tgt="jav", task="xnli", output=tmp_path, model=str(nllb_dir), device="cpu")
    translator = Translator(nllb_dir, GREEDY, progress=False)
    with pytest.raises(ValueError, match="no language token 'xxx_Latn'"):
        translator.translate(["hello"], "xxx_Latn", "sw")


def test_artifacts_are_readable_like_ordinary_files(tmp_path):
    import stat

    from flare_xlt.io import write_text_atomic

    write_text_atomic(tmp_path / "report.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask
