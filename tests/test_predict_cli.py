"""`flare-xlt predict` and FlarePredictor: new target-language text through a finished run's model, with the run's MT
(the stub command), its translation cache, streaming, and errors as one line."""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, NUSAX_DATA
from test_pipeline import QUICK

from flare_xlt import cli
from flare_xlt.mt.backends import TranslationInputWarning
from flare_xlt.pipeline import finetune, transfer
from flare_xlt.predictor import FlarePredictor, translator_from_options
from flare_xlt.tasks import NUSAX, TYDIQA, load_original_view

STUB = Path(__file__).parent / "mt_command_stub.py"
UPPER = f"{sys.executable} {STUB} upper"


@pytest.fixture(scope="module")
def runs(workspace, tmp_path_factory):
    """NusaX translated both ways by the stub MT command (upper-casing, cached), a stage-1 encoder and decoder, and
    a FLARE transfer of each to Indonesian; the test set as a jsonl of new inputs."""
    root = tmp_path_factory.mktemp("predict")
    translations = root / "translations"
    for src, tgt, split in (("en", "id", "train"), ("id", "en", "test")):
        cli.translate(
            tgt,
            src,
            task="nusax",
            splits=[split],
            data=NUSAX_DATA,
            output=translations,
            backend="command",
            command=UPPER,
        )
    made = {"translations": translations, "root": root}
    for kind in ("encoder", "decoder"):
        stage1 = finetune(str(workspace / kind), "nusax", output=root / kind, data=NUSAX_DATA, train=QUICK)
        made[kind] = stage1
        for method in ("flare", "lora", "translate-test", "ensemble", "input-fusion", "zero-shot", "flare-mt"):
            made[(kind, method)] = transfer(
                str(workspace / kind), "nusax", "id", method, stage1, translations, output=root / kind,
                data=NUSAX_DATA, train=QUICK, mt_states=workspace / "states" / kind,
            )  # fmt: skip
    test = load_original_view(NUSAX, "id", "test", NUSAX_DATA)
    (root / "test.jsonl").write_text("".join(json.dumps(record) + "\n" for record in test), encoding="utf-8")
    made["test"] = test
    return made


def run_cli(arguments: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        cli.main(arguments)
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def messages(err: str) -> list[str]:
    """stderr without the bar transformers shows while it loads the model's weights."""
    lines = err.replace("\r", "\n").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("Loading weights")]


def saved_predictions(run_dir: Path) -> list[str]:
    """The run's predictions.jsonl rows without the reference, serialized as predict serializes its rows."""
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return [json.dumps({key: row[key] for key in ("id", "prediction", "output")}, ensure_ascii=False) for row in rows]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize(
    "method", ["flare", "lora", "translate-test", "ensemble", "input-fusion", "zero-shot", "flare-mt"]
)
def test_predictions_equal_the_runs_own_on_its_test_set(runs, kind, method, capsys, one_thread):
    run_dir = runs[(kind, method)]
    code, out, err = run_cli(["predict", "--run", str(run_dir), "--input", str(runs["root"] / "test.jsonl")], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    mine = [json.dumps({key: row[key] for key in ("id", "prediction", "output")}, ensure_ascii=False) for row in rows]
    assert mine == saved_predictions(run_dir)
    for row in rows:
        assert row["label"] == (NUSAX.label_names[row["prediction"]] if row["prediction"] is not None else None)
        if kind == "encoder":  # the label is the most probable class, and the probabilities sum to 1
            probabilities = row["probabilities"]
            assert list(probabilities) == list(NUSAX.label_names)
            assert math.isclose(sum(probabilities.values()), 1.0, rel_tol=1e-5)
            assert max(probabilities, key=probabilities.get) == row["label"]
        else:
            assert "probabilities" not in row
    reads_translation = method not in ("lora", "zero-shot", "flare-mt")
    # Each method reads its own inputs: the translation only where it reads one, and then the stub's upper-casing.
    assert [("translation" in row) for row in rows] == [reads_translation] * 3
    if reads_translation:
        assert [row["translation"]["text"] for row in rows] == [record["text"].upper() for record in runs["test"]]
        # every test text was translated when the run's test set was: all from the cache, none anew
        assert "translations: 3 cached, 0 new" in err.splitlines()[-1]
    else:
        assert "translations:" not in err


def test_ensemble_probabilities_average_its_two_models(runs, one_thread):
    """The ensemble's probabilities are the mean of the translate-train LoRA's on the text and translate-test's on
    the translation: computed here from the two other runs' predictors."""
    texts = [record["text"] for record in runs["test"]]
    ensemble = FlarePredictor.from_run(runs[("encoder", "ensemble")])(texts)
    lora = FlarePredictor.from_run(runs[("encoder", "lora")])(texts)
    translate_test = FlarePredictor.from_run(runs[("encoder", "translate-test")])(texts)
    for combined, target, source in zip(ensemble, lora, translate_test, strict=True):
        for label in NUSAX.label_names:
            expected = (target["probabilities"][label] + source["probabilities"][label]) / 2
            assert math.isclose(combined["probabilities"][label], expected, rel_tol=1e-5, abs_tol=1e-7)


def test_the_python_predictor_matches_the_command_and_counts_cache_hits(runs, capsys, monkeypatch, one_thread):
    run_dir = runs[("encoder", "flare")]
    predictor = FlarePredictor.from_run(run_dir)
    text = runs["test"][0]["text"]
    one = predictor(text)
    assert one["id"] == 1 and one["translation"] == {"text": text.upper()}
    assert (predictor.counts.cached, predictor.counts.translated) == (1, 0)
    new = ["kalimat baru yang belum pernah diterjemahkan", "satu lagi"]
    first = predictor(new)
    assert (predictor.counts.cached, predictor.counts.translated) == (1, 2)
    # A second predictor (a second call of the command) reads what the first one added to the run's cache.
    again = FlarePredictor.from_run(run_dir)(new)
    assert again == first
    code, out, err = run_cli(["predict", "--run", str(run_dir)], capsys, "\n".join(new) + "\n", monkeypatch)
    assert code == 0 and err.splitlines()[-1].startswith("predict: 2 inputs; translations: 2 cached, 0 new")
    assert [json.loads(line)["probabilities"] for line in out.splitlines()] == [row["probabilities"] for row in first]


def test_line_break_empty_line_and_long_line_behave_as_documented(runs, capsys, monkeypatch, one_thread):
    run_dir = runs[("decoder", "flare")]
    predictor = FlarePredictor.from_run(run_dir)
    long_text = " ".join(["bagus"] * 200)  # far over max_length=48 tokens
    # txt: an empty and a blank line are skipped and counted, each row keeps its line number as id.
    code, out, err = run_cli(["predict", "--run", str(run_dir)], capsys, f"satu\n\n  \n{long_text}\n", monkeypatch)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["id"] for row in rows] == [1, 4]
    summary = err.splitlines()[-1]
    assert "empty lines skipped: 2 (line 2, 3)" in summary
    # the long line is cut as evaluate cuts it (its prompt and its translation's), and counted
    assert "predict: 2 inputs;" in summary and "2 cut to max_length=48 tokens" in summary
    assert rows[1]["output"] == predictor(["satu", long_text])[1]["output"]
    # jsonl: a line break inside a field stays in the text the model reads; the line-based MT command reads it
    # joined by a space (counted by the translator), so the translation is of the joined text.
    broken = {"id": "x", "text": "satu\ndua"}
    path = runs["root"] / "broken.jsonl"
    path.write_text(json.dumps(broken) + "\n", encoding="utf-8")
    with pytest.warns(TranslationInputWarning, match="1 of 1 texts to translate contain line breaks"):
        code, out, err = run_cli(["predict", "--run", str(run_dir), "--input", str(path)], capsys)
    row = json.loads(out)
    assert code == 0 and row["id"] == "x" and row["translation"] == {"text": "SATU DUA"}
    # the same record through Python: its translation now comes from the cache, so the MT (and its warning) is not run
    assert len(out.splitlines()) == 1 and row["output"] == predictor(broken)["output"]


def test_a_failing_mt_command_is_one_line_and_leaves_no_output(runs, capsys, tmp_path):
    run_dir = runs[("encoder", "flare")]
    output = tmp_path / "out.jsonl"
    inputs = tmp_path / "new.txt"
    inputs.write_text("baik\nFAIL di sini\n", encoding="utf-8")
    failing = f"{sys.executable} {STUB} fail"
    arguments = ["predict", "--run", str(run_dir), "--input", str(inputs), "--output", str(output), "--batch_size", "1"]
    code, out, err = run_cli([*arguments, "--mt.backend", "command", "--mt.command", failing], capsys)
    assert code == 2 and out == ""
    [message] = messages(err)
    assert message.startswith("error: MT command") and "failed on texts 1-1 of 1 with exit status 3" in message
    assert not output.exists() and list(tmp_path.iterdir()) == [inputs]  # the first batch's row is not left behind
    # the same command with a working MT writes the file whole
    code, _, err = run_cli([*arguments, "--mt.backend", "command", "--mt.command", UPPER], capsys)
    assert code == 0 and len(output.read_text().splitlines()) == 2


def test_user_errors_are_one_line_with_exit_code_2(runs, capsys, tmp_path, monkeypatch):
    run_dir = runs[("encoder", "flare")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"premise": "a"}\n', encoding="utf-8")
    cases = [
        (["--input_format", "xml"], "Unknown input format 'xml'; valid choices: txt, jsonl, csv, tsv."),
        (["--input", str(tmp_path / "new.docx")], "cannot tell the format from the suffix '.docx'"),
        (["--input", str(pairs)], "line 1: text missing or not text; nusax reads the fields text"),
        (["--mt.backend", "command", "--mt.model", "m"], "mt: model is not an option of the command backend"),
        (["--mt.backend", "command", "--mt.command", UPPER, "--mt.num_beams", "two"], "mt.num_beams expects an int"),
        (["--language", "xx"], "has no language 'xx'"),
    ]
    (tmp_path / "new.docx").write_text("x")
    for extra, message in cases:
        code, out, err = run_cli(["predict", "--run", str(run_dir), *extra], capsys, "baik\n", monkeypatch)
        assert code == 2 and out == "" and len(messages(err)) == 1, (extra, err)
        assert messages(err)[0].startswith("error: ") and message in err, (extra, err)


def test_a_run_without_recorded_mt_asks_for_one(runs, tmp_path, capsys, monkeypatch):
    """Translations from an older flare-xlt (their report records no MT) cannot be re-made: the MT must be named."""
    run_dir = runs[("encoder", "flare")]
    copied = tmp_path / "run"
    copied.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    (tmp_path / "translations").mkdir()
    (copied / "config.json").write_text(json.dumps({**config, "translations": str(tmp_path / "translations")}))
    (copied / "adapter").symlink_to(run_dir / "adapter")
    code, _, err = run_cli(["predict", "--run", str(copied)], capsys, "baik\n", monkeypatch)
    assert code == 2 and "holds no report of the MT that translated nusax's id test set" in err
    code, out, err = run_cli(
        ["predict", "--run", str(copied), "--mt.backend", "command", "--mt.command", UPPER],
        capsys,
        "baik\n",
        monkeypatch,
    )
    assert code == 0 and json.loads(out)["translation"] == {"text": "BAIK"}
    assert (tmp_path / "translations" / "translation_cache.sqlite").is_file()  # the default cache of that folder


def test_from_pretrained_loads_a_saved_adapter_on_its_base(runs, workspace, tmp_path, one_thread):
    run_dir, stage1 = runs[("encoder", "flare")], runs["encoder"]
    saved = tmp_path / "saved"
    shutil.copytree(run_dir / "adapter", saved)  # outside its run folder: a saved adapter, read without config.json
    translator = translator_from_options({"backend": "command", "command": UPPER}, tmp_path / "cache.sqlite")
    predictor = FlarePredictor.from_pretrained(
        saved, base=str(workspace / "encoder"), task="nusax", stage1=stage1, translator=translator,
        language="id",
    )  # fmt: skip
    texts = [record["text"] for record in runs["test"]]
    assert predictor(texts) == FlarePredictor.from_run(run_dir)(texts)
    with pytest.raises(ValueError, match="records no language"):
        FlarePredictor.from_pretrained(saved, base=str(workspace / "encoder"), task="nusax", stage1=stage1)


def test_extractive_qa_gives_the_answer_its_span_and_score(workspace, tmp_path, capsys, one_thread):
    """TyDiQA on the encoder: the rows equal the run's predictions.jsonl, and each span is where the answer stands in
    its context."""
    data = str(FIXTURES / "tydiqa")
    stage1 = finetune(str(workspace / "encoder"), "tydiqa", output=tmp_path, data=data, train=QUICK)
    run_dir = transfer(str(workspace / "encoder"), "tydiqa", "sw", "zero-shot", stage1, output=tmp_path, data=data)
    records = load_original_view(TYDIQA, "sw", "validation", data)  # TyDiQA-GoldP tests on its validation split
    inputs = tmp_path / "questions.jsonl"
    inputs.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    capsys.readouterr()  # what the two runs printed
    code, out, err = run_cli(["predict", "--run", str(run_dir), "--input", str(inputs)], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    mine = [json.dumps({key: row[key] for key in ("id", "prediction", "output")}, ensure_ascii=False) for row in rows]
    assert mine == saved_predictions(run_dir)
    for row, record in zip(rows, records, strict=True):
        start, end = row["span"]
        assert row["answer"] == row["prediction"] == record["context"][start:end] and row["answer"]
        assert isinstance(row["score"], float)


def test_rows_stream_out_before_the_input_ends(runs, monkeypatch):
    """`cat new.txt | flare-xlt predict --run ...` streams: the row of the first batch is in the output pipe while
    stdin is still open. Both ends are OS pipes with the block buffering a pipe gets, so the row arrives only if
    predict flushes it."""
    import os
    import selectors
    import threading

    from flare_xlt.predictor import predict

    input_read, input_write = os.pipe()
    output_read, output_write = os.pipe()
    monkeypatch.setattr(sys, "stdin", open(input_read, encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", open(output_write, "w", encoding="utf-8"))
    errors = []

    def command():
        try:
            predict(runs[("encoder", "flare")], batch_size=1)
        except BaseException as error:  # reported by the test, in its own thread
            errors.append(error)
        finally:
            sys.stdout.close()

    thread = threading.Thread(target=command)
    thread.start()
    with open(input_write, "w", encoding="utf-8") as feed, open(output_read, encoding="utf-8") as rows:
        feed.write("baik sekali\n")
        feed.flush()
        selector = selectors.DefaultSelector()
        selector.register(rows, selectors.EVENT_READ)
        ready = selector.select(timeout=60)
        first = json.loads(rows.readline()) if ready else None
        feed.write("buruk\n")
        feed.close()
        rest = rows.read()
    thread.join(timeout=60)
    sys.stdin.close()
    assert not errors and ready, errors or "no row within 60 s of the first line"
    assert first["id"] == 1 and first["translation"] == {"text": "BAIK SEKALI"}
    assert [json.loads(line)["id"] for line in rest.splitlines()] == [2]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_flare_mt_reads_the_states_mt_states_stores(runs, workspace, kind):
    """The NLLB encoder states a flare-mt predictor computes for the test texts are those `flare-xlt mt-states` wrote
    for the run's test set (the store the run was scored with)."""
    import torch

    from flare_xlt.mt.states import EncoderStateStore
    from flare_xlt.tasks import TaskEncoder

    predictor = FlarePredictor.from_run(runs[(kind, "flare-mt")])
    records = [predictor.record({"text": record["text"]}, position) for position, record in enumerate(runs["test"])]
    pairs = predictor._pairs(records)
    loaded = predictor.loaded
    encoder = TaskEncoder(NUSAX, loaded.tokenizer, loaded.architecture, "target", 48, for_generation=True)
    embeds, mask = predictor._encoder_states(encoder, pairs)([key for key, _ in encoder.state_texts(pairs)])
    stored, stored_mask = EncoderStateStore(workspace / "states" / kind / "test").batch(
        [record["id"] for record in runs["test"]]
    )
    assert torch.equal(mask, stored_mask)
    torch.testing.assert_close(embeds, stored, rtol=1e-2, atol=2e-3)  # float16 either way, batched differently


def test_text_pairs_come_from_the_tasks_fields():
    """A two-field task (XNLI's premise and hypothesis) reads jsonl and csv fields by name, never a txt line."""
    from flare_xlt.predictor import PredictionCounts, read_inputs
    from flare_xlt.tasks import XNLI

    counts = PredictionCounts()
    table = 'premise,hypothesis,note\n"El gato, duerme.",Un animal descansa.,x\n"Dos\nlíneas",Otra.,y\n'
    assert list(read_inputs(io.StringIO(table, newline=""), "csv", XNLI, "pairs.csv", counts)) == [
        {"id": 2, "premise": "El gato, duerme.", "hypothesis": "Un animal descansa."},
        {"id": 4, "premise": "Dos\nlíneas", "hypothesis": "Otra."},  # a quoted line break stays; the row ends on line 4
    ]
    lines = '{"id": "a", "premise": "P", "hypothesis": "H"}\n\n{"premise": "P2", "hypothesis": "H2"}\n'
    assert list(read_inputs(io.StringIO(lines), "jsonl", XNLI, "pairs.jsonl", counts)) == [
        {"id": "a", "premise": "P", "hypothesis": "H"},
        {"id": 3, "premise": "P2", "hypothesis": "H2"},
    ]
    with pytest.raises(ValueError, match=r"pairs.jsonl line 1: hypothesis missing or not text; xnli reads the fields"):
        list(read_inputs(io.StringIO('{"premise": "P"}\n'), "jsonl", XNLI, "pairs.jsonl", counts))
    with pytest.raises(ValueError, match=r"pairs.csv line 2: 1 columns, expected 2 \(premise, hypothesis\)"):
        list(read_inputs(io.StringIO("premise,hypothesis\nP\n"), "csv", XNLI, "pairs.csv", counts))
    with pytest.raises(ValueError, match="a txt input holds one text per line, but xnli reads 2 texts per example"):
        list(read_inputs(io.StringIO("P\n"), "txt", XNLI, "stdin", counts))
    assert counts.empty_lines == []  # blank jsonl lines are skipped without a count: only txt lines are inputs
