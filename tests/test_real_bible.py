"""The Bible tasks of the real benchmark: Taxi1500's published labels on bible.db's text, and bible-canon's label map
and split sampling. The tests that read bible.db skip locally without it and fail in CI (tests/test_real_assets.py)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest
from test_real_assets import require

from benchmarks.real import assets, bible, taxi1500
from flare_xlt.tasks import get_task, load_record_file


@pytest.fixture(scope="module")
def reader() -> bible.Bible:
    return bible.Bible(require(assets.bible_db))


def test_taxi1500_labels_are_the_published_splits():
    """860 / 106 / 111 rows, the test set's published label counts, every id a New Testament verse."""
    splits = taxi1500.read_labels()
    assert {role: len(rows) for role, rows in splits.items()} == {"train": 860, "validation": 106, "test": 111}
    assert Counter(label for _, label in splits["test"]) == {
        "Recommendation": 29,
        "Faith": 26,
        "Description": 19,
        "Sin": 16,
        "Grace": 14,
        "Violence": 7,
    }
    keys = [key for rows in splits.values() for key, _ in rows]
    assert len(set(keys)) == 1077 and all(40 <= book <= 66 for book, _, _ in keys)


def test_taxi1500_edited_label_files_fail_loudly(tmp_path):
    rows = {name: (taxi1500.DATA / f"{name}.tsv").read_text().splitlines() for name in ("train", "dev", "test")}

    def write(changed: dict) -> None:
        for name, lines in {**rows, **changed}.items():
            (tmp_path / f"{name}.tsv").write_text("\n".join(lines) + "\n")

    write({"test": rows["test"][:-1]})  # a row lost
    with pytest.raises(ValueError, match="published data has"):
        taxi1500.read_labels(tmp_path)
    write({"dev": [*rows["dev"][:-1], rows["train"][0]]})  # a training verse in dev
    with pytest.raises(ValueError, match=r"is also in train\.tsv"):
        taxi1500.read_labels(tmp_path)
    write({"dev": [rows["dev"][0].replace("\t", "\tHope")]})
    with pytest.raises(ValueError, match="expected `id<TAB>label`"):
        taxi1500.read_labels(tmp_path)
    assert taxi1500.verse_key("62003016") == (62, 3, 16)
    for bad in ("6203016", "62003000", "67001001", "6200301a"):
        with pytest.raises(ValueError, match="Taxi1500 verse id"):
            taxi1500.verse_key(bad)


def test_taxi1500_text_is_bible_db_by_verse_id(reader, tmp_path):
    """Each record's text is the verse the id names, read straight from bible.db (ids sliced here, not parsed by the
    code under test); labels come through unchanged; the same verses in every language."""
    built = taxi1500.build_task(reader, ["sw"], tmp_path, per_split={"train": 6, "validation": 2, "test": 5})
    task = get_task(built.task_file)
    assert task.metric == "macro_f1" and task.languages == ("en", "sw")
    published = {
        line.split("\t")[0]: line.split("\t")[1]
        for name in ("train", "test")
        for line in (taxi1500.DATA / f"{name}.tsv").read_text().splitlines()
    }
    connection = sqlite3.connect(reader.path)
    for language in ("en", "sw"):
        for split, count in (("train", 6), ("test", 5)):
            records = load_record_file(task, built.data / language / f"{split}.jsonl")
            assert len(records) == count
            for record in records:
                raw = next(
                    i for i in published if bible.verse_id((int(i[:2]), int(i[2:5]), int(i[5:]))) == record["id"]
                )
                row = connection.execute(
                    "select vText from bible where bbName = ? and bNumber = ? and cNumber = ? and vNumber = ?",
                    (bible.TRANSLATIONS[language][0], int(raw[:2]), int(raw[2:5]), int(raw[5:])),
                ).fetchone()
                assert record["text"] == bible.clean(row[0])
                assert task.label_names[record["label"]] == published[raw]
    assert built.missing == {}


def test_a_verse_a_language_lacks_is_listed_not_dropped_silently(tmp_path):
    chosen = {"train": [((1, 1, 1), "a"), ((1, 1, 2), "b")], "test": [((1, 2, 1), "a"), ((1, 2, 2), "b")]}
    texts = {
        "en": {(1, 1, 1): "one", (1, 1, 2): "two", (1, 2, 1): "three", (1, 2, 2): "four"},
        "sw": {(1, 1, 1): "moja", (1, 1, 2): "mbili", (1, 2, 2): "nne"},
    }
    spec = {"name": "t", "kind": "classification", "text_fields": ["text"], "metric": "accuracy"}
    built = bible.write_task({**spec, "label_names": ["a", "b"]}, ["sw"], tmp_path, chosen, texts)
    assert built.missing == {"sw": {"test": ["1-2-1"]}} and built.missing_counts() == {"sw": 1}
    task = get_task(built.task_file)
    assert [r["id"] for r in load_record_file(task, built.data / "sw" / "test.jsonl")] == ["1-2-2"]
    assert [r["id"] for r in load_record_file(task, built.data / "en" / "test.jsonl")] == ["1-2-1", "1-2-2"]
    bible.write_translations(built, {"sw": bible.MTCondition("oracle")}, tmp_path / "mt")
    test_mt = tmp_path / "mt" / "t_test_sw-en.jsonl"
    assert [r["text"] for r in load_record_file(task, test_mt)] == ["four"]


def write_design(path, books: str, extra: str = "") -> None:
    path.write_text(
        "name: bible-canon\nkind: classification\ntext_fields: [text]\nmetric: accuracy\n"
        f"encoder_template: '{{text}}'\n{extra}books:\n{books}"
    )


def test_canon_label_map_is_read_from_the_design_file(reader, tmp_path):
    """Labels and their books come from the file: a two-label design builds only verses of its books, labelled by
    them, and label_names follow the file's order."""
    design_file = tmp_path / "design.yaml"
    write_design(design_file, "  letters: [[45, 57], [59, 65]]\n  gospels: [[40, 43]]\n")
    design = bible.load_canon_design(design_file)
    sizes = bible.TaskSizes(train_per_class=8, validation_per_class=2, test_per_class=5)
    built = bible.build_task(reader, ["sw"], tmp_path / "built", sizes, design)
    task = get_task(built.task_file)
    assert task.label_names == ("letters", "gospels")
    for rows in built.chosen.values():
        for (book, _, _), label in rows:
            assert label == ("gospels" if 40 <= book <= 43 else "letters") and book != 58 and book <= 65
    for split, count in sizes.per_class().items():
        records = load_record_file(task, built.data / "en" / f"{split}.jsonl")
        assert Counter(r["label"] for r in records) == {0: count, 1: count}

    repository = bible.load_canon_design()
    assert repository.labels == ["law-history", "wisdom", "prophets", "new-testament"]
    assert repository.label_of(17) == "law-history" and repository.label_of(18) == "wisdom"
    assert repository.label_of(40) == "new-testament" and repository.label_of(66) is None

    for books, extra, message in (
        ("  a: [[1, 5]]\n  b: [[5, 9]]\n", "", "book 5 is in both"),
        ("  a: [[1, 5]]\n  b: [[60, 67]]\n", "", "not a range within 1-66"),
        ("  a: [[1, 5]]\n  b: [7]\n", "", r"each range is \[first, last\]"),
        ("  a: [[1, 5]]\n", "", "at least two labels"),
        ("  a: [[1, 5]]\n  b: [[6, 9]]\n", "label_names: [a, b]\n", "remove label_names"),
    ):
        write_design(design_file, books, extra)
        with pytest.raises(ValueError, match=message):
            bible.load_canon_design(design_file)


def test_canon_splits_are_sampled_independently(reader):
    """Changing the training or validation size leaves the test verses (and each other split's) as they were; the
    splits share no chapter."""
    design = bible.load_canon_design()
    english, swahili = reader.verses("en"), reader.verses("sw")
    small = bible.TaskSizes(train_per_class=40, validation_per_class=10, test_per_class=30)
    large = bible.TaskSizes(train_per_class=400, validation_per_class=20, test_per_class=30)
    fewer_test = bible.TaskSizes(train_per_class=40, validation_per_class=10, test_per_class=20)
    first, second = (bible.select_verses(english, [swahili], sizes, design) for sizes in (small, large))
    third = bible.select_verses(english, [swahili], fewer_test, design)
    assert sorted(first["test"]) == sorted(second["test"])
    assert sorted(first["train"]) == sorted(third["train"]) and sorted(first["validation"]) == sorted(
        third["validation"]
    )
    chapters = {split: {key[:2] for key, _ in rows} for split, rows in second.items()}
    assert not chapters["train"] & chapters["test"] and not chapters["validation"] & chapters["test"]
    assert Counter(label for _, label in second["train"]) == dict.fromkeys(design.labels, 400)


def test_bench_real_keeps_the_two_tasks_stage1_apart(tmp_path):
    """bible-canon and Taxi1500 train their own stage 1 with the same model: the planner counts one per task and
    seed, and a finished canon stage 1 does not stand for Taxi1500's."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from benchmarks.real import run as real
    from flare_xlt.pipeline.recipe_file import Recipe

    def grid(name: str, task: str) -> real.Grid:
        recipe = Recipe(
            model="m", task="xnli", languages=["sw"], methods=["lora"], seeds=[1], output=str(tmp_path / name)
        )
        return real.Grid(name, name, recipe, {}, "m", ("lora",), ("sw",), task=task)

    canon, taxi = grid("canon", "bible-canon"), grid("taxi", "taxi1500")
    planned = real.planned_runs([canon, taxi])
    assert sum(method == "finetune" for _, method, _, _ in planned) == 2
    folder = Path(canon.recipe.output) / "xnli-en-finetune-seed1-0"
    folder.mkdir(parents=True)
    metrics = {"task": "xnli", "method": "finetune", "seed": 1, "language": "en", "metric": "accuracy"}
    metrics |= {"scores": {"en": {"accuracy": 0.5}}, "run": folder.name, "config_hash": "0"}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    finished = planned & real.finished_keys([canon, taxi])
    assert [key[0] for key in finished] == ["m / bible-canon"]
    # A grid that starts from another's stage 1 (the oracle and harsh tables) finds it there when run alone; the
    # other folder's transfers are not its runs.
    transfer = folder.with_name("xnli-sw-lora-seed1-0")
    transfer.mkdir()
    (transfer / "metrics.json").write_text(json.dumps({**metrics, "method": "lora", "language": "sw"}))
    harsh = real.Grid(
        "harsh",
        "harsh",
        replace(canon.recipe, output=str(tmp_path / "harsh")),
        {},
        "m",
        ("lora",),
        ("sw",),
        task="bible-canon",
        stage1_from=canon.recipe,
    )
    assert real.finished_keys([harsh]) == {("m / bible-canon", "finetune", "en", 1)}


def test_bench_real_seeds_option_runs_only_a_grids_own_seeds():
    """`--seeds 2` runs seed 2 where a grid plans it and nothing in a grid that plans only seed 1 (taxi1500-wide,
    the decoder table): a seed-by-seed full run trains no run that no table shows."""
    from benchmarks.real import run as real

    assert real.grid_seeds([2], [1, 2, 3]) == [2]
    assert real.grid_seeds([2], [1]) == [] == real.grid_seeds([2, 3], list(real.DECODER_SIZES["full"].seeds))
    assert real.grid_seeds([3, 1], [1, 2]) == [1]
    assert real.grid_seeds(None, [1, 2, 3]) == [1, 2, 3]
    assert real.SIZES["full"].taxi_wide_seeds == (1,) and real.DECODER_SIZES["full"].seeds == (1,)


def test_the_floor_section_compares_stage1_with_the_english_probe(tmp_path):
    """REAL.md's floor: stage 1's English accuracy over the grid's seeds against the English probe, and per language
    the probe on the MT training text against the one on the human translation, from the runs and the probe rows."""
    import json
    from pathlib import Path

    from benchmarks.real import run as real
    from flare_xlt.pipeline.recipe_file import Recipe

    recipe = Recipe(model="m", task="xnli", languages=["hi"], methods=["lora"], seeds=[1, 2], output=str(tmp_path))
    for seed, accuracy in ((1, 0.75), (2, 0.79), (3, 0.10)):  # seed 3 is not the grid's
        folder = Path(recipe.output) / f"bible-canon-en-finetune-seed{seed}-0"
        folder.mkdir()
        metrics = {"task": "bible-canon", "method": "finetune", "seed": seed, "language": "en", "metric": "accuracy"}
        metrics |= {"scores": {"en": {"accuracy": accuracy}}, "run": folder.name, "config_hash": "0"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    grid = real.Grid("canon", "canon", recipe, {}, "m", ("lora",), ("hi",))
    probes = [
        {"trained_on": "English train", "scored_on": "English test", "accuracy": 0.64},
        {"trained_on": "English train", "scored_on": "hi test", "accuracy": 0.49},
        {"trained_on": "hi human train", "scored_on": "hi test", "accuracy": 0.60},
        {"trained_on": "hi MT train", "scored_on": "hi test", "accuracy": 0.58},
    ]
    text = "\n".join(real.floor_section(probes, grid))
    assert "| hi MT train | hi test | 58.0 |" in text
    assert "2 seed(s): 75.0, 79.0; mean 77.0 %) against the linear probe on English (64.0 %): stage 1 is +13.0" in text
    assert "hi: a probe trained on the MT training text scores 58.0 %, on the human translation 60.0 % (-2.0), " in text
    assert "on English (zero-shot) 49.0 %." in text


def test_the_report_measures_its_wall_time_from_the_empty_workspace(tmp_path):
    import datetime

    from benchmarks.real import run as real

    tables = ["canon", "taxi1500"]
    assert real.since_started(tmp_path, tables) == ""  # a workspace made before starts were recorded
    (tmp_path / real.STARTED).write_text("2026-12-08T00:42:32+00:00")
    now = datetime.datetime(2026, 12, 8, 3, 7, 2, tzinfo=datetime.UTC)
    since = "; 144 min since the workspace was started empty (2026-12-08 00:42 UTC)"
    assert real.since_started(tmp_path, tables, now) == since
    # Once every table was complete, the fresh run's time stays that, whenever a later report is written; a table
    # added afterwards is named, its runs not being in it.
    (tmp_path / real.FINISHED).write_text(json.dumps({"finished_at": "2026-12-08T03:01:25+00:00", "tables": tables}))
    took = "; the full run from the empty workspace took 139 min (started 2026-12-08 00:42 UTC)"
    assert real.since_started(tmp_path, tables, now + datetime.timedelta(days=1)) == took
    assert real.since_started(tmp_path, [*tables, "canon-harsh"]) == took + (
        ", tables added to the workspace after it: canon-harsh"
    )


def test_workspace_digest_leaves_out_only_the_fields_of_tables_with_their_own_folder():
    """The harsher-MT table's settings name its own folder: changing them keeps the workspace (every other run stays
    valid); changing any other field makes a new one."""
    from dataclasses import replace

    from benchmarks.real import run as real

    size = real.SIZES["tiny"]
    assert real.workspace("tiny", replace(size, harsh_error_rate=0.7, harsh_languages=("hi",))) == real.workspace(
        "tiny", size
    )
    assert real.workspace("tiny", replace(size, degraded_error_rate=0.2)) != real.workspace("tiny", size)
    for wrong, message in (
        ({"harsh_languages": ("es",)}, "Spanish has real MT"),
        ({"harsh_error_rate": 0.1}, "harsh_error_rate must be above degraded_error_rate"),
    ):
        with pytest.raises(ValueError, match=message):
            replace(size, **wrong)


def test_the_harsh_table_reads_its_own_translations_and_the_main_stage1(reader, tmp_path):
    """canon-harsh: its translations, in its own folder, are the human ones with its error rate's word errors (each
    word dropped with probability rate / 2: about 1 - rate / 2 of the words remain, train and test side), and it
    starts from the main table's stage-1 runs."""
    from pathlib import Path

    from benchmarks.real import run as real

    require(assets.e5_folder)
    size = real.SIZES["tiny"]
    training = real.Training(size.train, size.stage1_train, size.adapter, size.pooling)
    (grid,) = real.canon_grids(size, reader, tmp_path, training, ["canon-harsh"])
    rate, language = size.harsh_error_rate, size.harsh_languages[0]
    assert (grid.name, grid.methods, grid.languages) == ("canon-harsh", tuple(real.HARSH_METHODS), (language,))
    assert grid.recipe.translations == str(tmp_path / f"harsh-{rate:g}" / "translations")
    assert grid.stage1_from.output == str(tmp_path / "main" / "runs") != grid.recipe.output
    assert grid.mt[language].describe() == bible.MTCondition("degraded", rate).describe()

    def words(path: Path) -> int:
        return sum(len(json.loads(line)["text"].split()) for line in path.read_text(encoding="utf-8").splitlines())

    translations = Path(grid.recipe.translations)
    for split, source, target in (("train", "en", language), ("validation", "en", language), ("test", language, "en")):
        human = words(tmp_path / "data" / target / f"{split}.jsonl")
        kept = words(translations / f"bible-canon_{split}_{source}-{target}.jsonl") / human
        assert abs(kept - (1 - rate / 2)) < 0.1, (split, kept, human)


def test_bench_real_tiny_taxi1500_end_to_end(tmp_path, monkeypatch):
    """`--size tiny` through the real recipes on Taxi1500 (one seed, Spanish with Apertium): every method of the table
    runs on multilingual-e5-small, and the report shows its macro-F1 table with accuracy beside it."""
    from benchmarks.real import run as real

    require(assets.e5_folder)
    require(assets.bible_db)
    if not {"eng-spa", "spa-eng"} <= set(assets.apertium_pairs()):
        pytest.skip("Apertium eng-spa/spa-eng are not installed (`make apertium`).")
    monkeypatch.setattr(real, "workspace", lambda size_name, size: tmp_path / "work")
    report = real.main(["--size", "tiny", "--grids", "taxi1500", "--seeds", "1", "--workers", "1"])
    text = report.read_text()
    assert " min since the workspace was started empty (" in text  # this run began in an empty workspace
    assert "## Taxi1500, every method" in text and "Accuracy (%, mean over seeds) beside it" in text
    assert real.TAXI1500_PUBLISHED in text
    table = text.split("## Taxi1500, every method", 1)[1].split("Accuracy (%", 1)[0]
    for method in real.METHODS:
        assert f"| {method} |" in table
    size = real.SIZES["tiny"]
    runs = {(run["method"], run["language"]) for run in real.collect_runs(tmp_path / "work" / "taxi1500" / "runs")}
    assert runs == {("finetune", "en"), *((method, "es") for method in real.METHODS)}
    assert size.taxi_per_split["test"] == 6
    # Each method's run time, from its run's own timings.json (one seed: the median is that run's).
    times = text.split("Median wall minutes per run (runs timed): ", 1)[1].split("\n", 1)[0]
    for run in real.collect_runs(tmp_path / "work" / "taxi1500" / "runs"):
        if run["method"] in real.METHODS:
            seconds = json.loads((run["path"].parent / "timings.json").read_text())["total_wall_seconds"]
            assert f"{run['method']} {seconds / 60:.1f} (1)" in times


def test_e5_folder_declares_mean_pooling(tmp_path):
    """The e5 folder carries sentence-transformers' pooling declaration, so the recipes' `pooling: auto` heads pool by
    the mean, as e5 was trained; a folder converted before the declaration gets it on use, once."""
    import json

    from flare_xlt.pipeline.pooling import resolve_pooling

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 384}))
    assert resolve_pooling("auto", str(tmp_path), "classification", "encoder") == "cls"
    assert assets.declare_mean_pooling(tmp_path) == tmp_path
    assert resolve_pooling("auto", str(tmp_path), "classification", "encoder") == "mean"
    assert json.loads((tmp_path / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 384
    written = (tmp_path / "modules.json").stat().st_mtime_ns
    assets.declare_mean_pooling(tmp_path)
    assert (tmp_path / "modules.json").stat().st_mtime_ns == written


def test_near_gold_probes_match_probes_fitted_on_one_verse_at_a_time(reader, tmp_path):
    """near_gold.py's frozen-feature probes on a small bible-canon equal probes fitted here on features computed one
    verse at a time (no batching, no padding, pooled by hand); an MT file that holds the human translation probes
    exactly as the human text does; an MT file out of the English order fails loudly, before any feature."""
    import shutil

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.real import near_gold
    from flare_xlt.methods.linear_probe import PROBE_C, PROBE_MAX_ITER

    folder = require(assets.e5_folder)
    sizes = bible.TaskSizes(train_per_class=4, validation_per_class=1, test_per_class=3)
    built = bible.build_task(reader, ["hi"], tmp_path, sizes)
    assert not built.missing, built.missing  # every chosen verse in both languages: the MT file can be the human one
    mt_file = tmp_path / "main" / "translations" / f"{get_task(built.task_file).name}_train_en-hi.jsonl"
    mt_file.parent.mkdir(parents=True)
    lines = (tmp_path / "data" / "hi" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    mt_file.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="The hi MT training file does not hold the English training verses in order"):
        near_gold.probe_scores(tmp_path, ["hi"], max_length=48)
    shutil.copy(tmp_path / "data" / "hi" / "train.jsonl", mt_file)

    rows = near_gold.probe_scores(tmp_path, ["hi"], max_length=48)
    accuracy = {(row["trained_on"], row["scored_on"]): row["accuracy"] for row in rows}
    assert len(rows) == len(accuracy) == 4
    assert accuracy[("hi MT train", "hi test")] == accuracy[("hi human train", "hi test")]

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    verses, features = {}, {}
    for language, split in (("en", "train"), ("en", "test"), ("hi", "train"), ("hi", "test")):
        lines = (tmp_path / "data" / language / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        verses[language, split] = [json.loads(line) for line in lines]
        pooled = []
        for record in verses[language, split]:
            encoded = tokenizer(record["text"], truncation=True, max_length=48, return_tensors="pt")
            with torch.no_grad():
                pooled.append(model(**encoded).last_hidden_state[0].mean(dim=0))  # one verse: every token is real
        features[language, split] = torch.stack(pooled).numpy()

    def score(train: tuple[str, str], test: tuple[str, str]) -> float:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER))
        probe.fit(features[train], [record["label"] for record in verses[train]])
        return float((probe.predict(features[test]) == [record["label"] for record in verses[test]]).mean())

    assert accuracy[("English train", "English test")] == score(("en", "train"), ("en", "test"))
    assert accuracy[("English train", "hi test")] == score(("en", "train"), ("hi", "test"))
    assert accuracy[("hi human train", "hi test")] == score(("hi", "train"), ("hi", "test"))
