"""The embedded benchmark: the synthetic world's grammar and labels, the simulated MT, the pretraining cache, and the
whole `flare-xlt demo` code path at reduced sizes."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import statistics
from dataclasses import replace

import pytest

from flare_xlt.demo.experiment import (
    DEMO_SIZES,
    TARGET,
    TRAINABLE,
    DemoConfig,
    run_demo,
    setting_name,
    write_task_data,
)
from flare_xlt.demo.pretrain import PretrainingConfig, pretrained_model, pretraining_corpus, train_tokenizer
from flare_xlt.demo.world import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    Clause,
    Lexicon,
    Meaning,
    NoisyMT,
    realise_english,
    realise_tolan,
    sample_meaning,
    vocabulary,
)
from flare_xlt.pipeline.runs import finetune

LEXICON = Lexicon.invent(0)


def copula(word: str, polarity: int, negated: bool = False, intensifier: str | None = None) -> Clause:
    return Clause("copula", "food", "the", polarity, word, negated, intensifier)


def test_sentiment_is_compositional():
    assert Meaning((copula("good", POSITIVE),)).label == POSITIVE
    assert Meaning((copula("good", POSITIVE, negated=True),)).label == NEGATIVE
    assert Meaning((copula("bad", NEGATIVE, negated=True),)).label == NEUTRAL  # "not bad"
    assert Meaning((copula("red", NEUTRAL, negated=True),)).label == NEUTRAL
    contrast = Meaning((copula("good", POSITIVE), copula("awful", NEGATIVE)))
    assert contrast.label == NEGATIVE  # "A but B" means B
    assert Meaning((copula("awful", NEGATIVE), copula("good", POSITIVE, negated=True))).label == NEGATIVE


def test_tolan_differs_in_words_morphology_and_order():
    word = LEXICON.tolan
    meaning = Meaning(
        (
            copula("good", POSITIVE, negated=True, intensifier="very"),
            Clause("verb", "hotel", "our", NEGATIVE, "hate", negated=False, subject="my friend"),
        ),
        time="yesterday",
    )
    assert realise_english(meaning) == "yesterday the food was not very good but my friend hated our hotel"
    good, hate = word["good"], word["hate"]
    assert realise_tolan(meaning, LEXICON) == (
        f"{word['food']} {word['the']} ma{good}-{good} {word['was']} {word['but']} "
        f"{word['my']} {word['friend']} {word['hotel']} {word['our']} {hate}ta {word['yesterday']}"
    )
    # Every intensifier becomes the same reduplication: Tolan has one word where English has three.
    quite = Meaning((copula("good", POSITIVE, intensifier="quite"),))
    really = Meaning((copula("good", POSITIVE, intensifier="really"),))
    assert realise_tolan(quite, LEXICON) == realise_tolan(really, LEXICON)
    assert len(set(word.values())) == len(word)  # invented words are distinct
    assert Lexicon.invent(0).tolan == word and Lexicon.invent(1).tolan != word


def test_noisy_mt_rate_and_determinism():
    rng = random.Random(5)
    meanings = [sample_meaning(rng) for _ in range(800)]
    exact = NoisyMT(LEXICON, 0.0)
    assert all(exact.translate(m, TARGET, str(i)) == realise_tolan(m, LEXICON) for i, m in enumerate(meanings))
    assert all(exact.translate(m, "en", str(i)) == realise_english(m) for i, m in enumerate(meanings))

    noisy = NoisyMT(LEXICON, 0.3)
    words = sum(len(realise_english(m).split()) for m in meanings)
    translated = [noisy.translate(m, "en", str(i)) for i, m in enumerate(meanings)]
    kept = sum(len(text.split()) for text in translated)
    # Each word is dropped with probability 0.15: the kept share is 0.85 within 3 standard errors.
    assert abs(kept / words - 0.85) < 3 * (0.15 * 0.85 / words) ** 0.5
    assert translated == [noisy.translate(m, "en", str(i)) for i, m in enumerate(meanings)]
    with pytest.raises(ValueError, match=r"mt_error_rate must be in \[0, 1\]"):
        NoisyMT(LEXICON, 1.5)


def test_target_resource_sets_the_corpus_mix_and_tolan_is_cut_into_more_pieces():
    config = PretrainingConfig(
        english_sentences=2000, target_resource=0.05, parallel_sentences=0, code_switched_sentences=0
    )
    corpus = pretraining_corpus(config, LEXICON)
    english_words = set(vocabulary("en", LEXICON))
    english_lines = [line for line in corpus if set(line.split()) <= english_words]
    assert len(english_lines) == 2000 and len(corpus) == 2000 + 100  # 0.05 Tolan sentences per English one
    tokenizer = train_tokenizer(corpus, "decoder", vocab_size=300)
    rng = random.Random(1)
    meanings = [sample_meaning(rng) for _ in range(200)]

    def pieces_per_word(texts: list[str]) -> float:
        return statistics.mean(len(tokenizer.tokenize(text)) / len(text.split()) for text in texts)

    english = pieces_per_word([realise_english(m) for m in meanings])
    tolan = pieces_per_word([realise_tolan(m, LEXICON) for m in meanings])
    assert english < 1.2 < 2 < tolan, (english, tolan)
    with pytest.raises(ValueError, match="target_resource must be in"):
        PretrainingConfig(target_resource=0.0)


TINY = DEMO_SIZES["tiny"]
TINY_PRETRAINING = TINY.pretraining


def test_pretrained_model_is_cached(tmp_path, capsys):
    first = pretrained_model(tmp_path, TINY_PRETRAINING, "encoder", LEXICON, world_seed=0)
    written = (first / "model.safetensors").stat().st_mtime_ns
    assert pretrained_model(tmp_path, TINY_PRETRAINING, "encoder", LEXICON, world_seed=0) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == written
    assert "reusing" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no scratch folder left behind
    with pytest.raises(ValueError, match="valid choices: decoder, encoder"):
        pretrained_model(tmp_path, TINY_PRETRAINING, "seq2seq", LEXICON, world_seed=0)


def test_encoder_stage1_learns_english_beyond_chance(tmp_path):
    """The encoder world learns its task (issue 19): stage 1 with the demo's trainable modules and epoch rule, on a
    tiny encoder and 400 examples, is far above chance (33.3 for 3 classes). Measured at this size: seeds 1, 2, 3 score
    78, 65, 73; the old setting (a LoRA and the head, 'lora') scores 37 at seed 1, which this test rejects."""
    sizes = replace(TINY, train_examples=400, test_examples=150, train=replace(TINY.train, epochs=4.0))
    config = DemoConfig(output=tmp_path, model_type="encoder", flare_mt=False, seeds=(1,), sizes=sizes)
    model = pretrained_model(tmp_path / "pretrained", TINY_PRETRAINING, "encoder", LEXICON, world_seed=0)
    write_task_data(config, LEXICON, tmp_path / "world")
    train = replace(sizes.train_for("encoder"), seed=1)
    assert train.epochs == 8.0
    run = finetune(
        str(model),
        str(tmp_path / "world" / "task.yaml"),
        tmp_path / "runs",
        str(tmp_path / "world" / "data"),
        "encoder",
        TRAINABLE,
        False,
        sizes.adapter,
        train,
    )
    english = json.loads((run / "metrics.json").read_text())["scores"]["average"]["macro_f1"]
    assert english > 0.55, english


DEMO_METHODS = ["zero-shot", "translate-test", "lora", "input-fusion", "ensemble", "flare", "flare-mt"]


def demo_arguments(config: DemoConfig) -> list[str]:
    seed_list = f"[{', '.join(map(str, config.seeds))}]"
    arguments = ["demo", "--size", "tiny", "--model_type", config.model_type, "--mt_error_rate"]
    arguments += [f"{config.mt_error_rate:g}", "--seeds", seed_list, "--output", str(config.output)]
    return arguments + ([] if config.workers is None else ["--workers", str(config.workers)])


@pytest.fixture(scope="module")
def decoder_demo(tmp_path_factory) -> tuple[DemoConfig, str]:
    """The tiny decoder demo from the command line, two seeds, two runs side by side (`--workers 2`), and what it
    printed. Made once: the every-method test reads it, the side-by-side test compares one process with it, and the
    sweep starts from its setting (the runs of a finished point are reused)."""
    from flare_xlt import cli

    config = DemoConfig(
        output=tmp_path_factory.mktemp("decoder-demo"), mt_error_rate=0.2, seeds=(1, 2), sizes=TINY, workers=2
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(demo_arguments(config))
    return config, printed.getvalue()


def check_every_method_demo(config: DemoConfig, printed: str, capsys) -> None:
    """The demo of `config` ran every method; its table holds each method's mean ± std over the seeds, or the score
    alone for one seed; a second run reuses every run."""
    folder = config.output / setting_name(config)
    runs = [json.loads(path.read_text()) for path in sorted((folder / "runs").rglob("metrics.json"))]
    assert sorted((run["method"], run["seed"]) for run in runs) == sorted(
        [("finetune", seed) for seed in config.seeds]
        + [(method, seed) for method in DEMO_METHODS for seed in config.seeds]
    )

    def cell(method: str) -> str:
        scores = [100 * run["scores"]["average"]["macro_f1"] for run in runs if run["method"] == method]
        return f"{statistics.mean(scores):.1f}" + (
            f" ± {statistics.stdev(scores):.1f}" if len(config.seeds) > 1 else ""
        )

    # Each row: the stage-1 English score every method starts from, then tol and Avg.
    for method in DEMO_METHODS:
        assert f"| {method} | {cell('finetune')} | {cell(method)} | {cell(method)} |" in printed
    assert (folder / "report_tolan_sentiment.png").stat().st_size > 0
    states = json.loads((folder / "mt_states" / TARGET / "test" / "index.json").read_text())
    assert sorted(states["ids"]) == sorted(f"test-{i}" for i in range(24))
    assert states["d_model"] == TINY_PRETRAINING.hidden_size

    capsys.readouterr()
    assert run_demo(config).split("Wall time")[0] in printed
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(runs)


def test_the_decoder_demo_runs_every_method_and_reuses_its_runs(decoder_demo, capsys):
    """The tiny demo from the command line (`demo --size tiny`, the tiny world and not the full one), two seeds."""
    check_every_method_demo(*decoder_demo, capsys)


def test_the_encoder_demo_runs_every_method_and_reuses_its_runs(tmp_path, capsys):
    """The same on the encoder, one seed: the one-seed table format."""
    from flare_xlt import cli

    config = DemoConfig(output=tmp_path, model_type="encoder", mt_error_rate=0.2, seeds=(1,), sizes=TINY)
    cli.main(demo_arguments(config))
    check_every_method_demo(config, capsys.readouterr().out, capsys)


def test_an_unknown_demo_size_is_one_line(capsys):
    from flare_xlt import cli

    with pytest.raises(SystemExit) as error:
        cli.main(["demo", "--size", "huge"])
    assert (
        error.value.code == 2 and capsys.readouterr().err == "error: Unknown size 'huge'; valid choices: full, tiny.\n"
    )


def test_the_two_error_knobs_change_only_their_own_direction(tmp_path):
    """mt_error_rate_train touches only the English -> Tolan train file; mt_error_rate_test only the Tolan -> English
    test file. Each is checked against the exact realisation the world writes for the other language."""
    from flare_xlt.demo.experiment import write_task_data
    from flare_xlt.tasks import read_rows

    def written(config: DemoConfig) -> dict[str, list[str]]:
        folder = tmp_path / setting_name(config)
        write_task_data(config, LEXICON, folder)
        files = {
            "train": folder / "translations" / f"tolan_sentiment_train_en-{TARGET}.jsonl",
            "test": folder / "translations" / f"tolan_sentiment_test_{TARGET}-en.jsonl",
        }
        return {split: [row["text"] for _, row in read_rows(path)] for split, path in files.items()}

    exact = written(DemoConfig(output=tmp_path, mt_error_rate=0.0, sizes=TINY))
    noisy_train = written(DemoConfig(output=tmp_path, mt_error_rate=0.0, mt_error_rate_train=0.5, sizes=TINY))
    noisy_test = written(DemoConfig(output=tmp_path, mt_error_rate=0.0, mt_error_rate_test=0.5, sizes=TINY))
    both = written(DemoConfig(output=tmp_path, mt_error_rate=0.5, sizes=TINY))
    assert noisy_train["test"] == exact["test"] and noisy_train["train"] != exact["train"]
    assert noisy_test["train"] == exact["train"] and noisy_test["test"] != exact["test"]
    assert both == {"train": noisy_train["train"], "test": noisy_test["test"]}  # the shared knob sets both
    configs = [DemoConfig(mt_error_rate=0.0, mt_error_rate_test=rate) for rate in (0.0, 0.5)]
    assert setting_name(configs[0]) != setting_name(configs[1])
    assert setting_name(DemoConfig(mt_error_rate=0.1)) == setting_name(DemoConfig(mt_error_rate_train=0.1))
    with pytest.raises(ValueError, match=r"MT error rates must lie in \[0, 1\]"):
        DemoConfig(mt_error_rate_test=1.5)


def test_a_sweep_of_two_points_writes_its_table_and_plot(decoder_demo, capsys):
    from flare_xlt.demo.sweep import parse_sweep, run_sweep, sweep_scores

    # From the decoder demo's setting (MT error 0.2 both ways), whose seed-1 runs the point 0.2 reuses.
    demo_config, _ = decoder_demo
    name, values = parse_sweep("mt_error_rate_test=0.3,0.2")
    assert (name, values) == ("mt_error_rate_test", [0.2, 0.3])
    config = replace(demo_config, seeds=(1,), workers=None)
    table = run_sweep(config, name, values)
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(DEMO_METHODS) + 1  # and stage 1
    scores = sweep_scores(config, name, values)
    assert set(scores) == set(DEMO_METHODS)
    for method, per_value in scores.items():
        # One seed: its score alone, no "± 0.0".
        cells = " | ".join(f"{100 * per_value[value][0]:.1f}" for value in values)
        assert f"| {method} | {cells} |" in table
    # Beside it, each method minus lora at every value with its paired interval and verdict.
    differences = table.split("Difference from lora")[1].splitlines()
    for method in set(scores) - {"lora"}:
        row = next(line for line in differences if line.startswith(f"| {method} | "))
        assert len(re.findall(r"[+-]\d+\.\d \[[^]]+\] (?:ahead|behind|level) \|", row)) == len(values)
    # zero-shot reads no translation: the test-side error cannot move it; translate-test reads only that
    assert scores["zero-shot"][0.2] == scores["zero-shot"][0.3]
    for suffix in ("md", "csv", "png", "pdf"):
        assert (config.output / f"sweep-decoder-mt_error_rate_test.{suffix}").stat().st_size > 0
    rows = (config.output / "sweep-decoder-mt_error_rate_test.csv").read_text().splitlines()
    assert rows[0] == "method,mt_error_rate_test,seed_index,macro_f1_percent" and len(rows) == 1 + len(DEMO_METHODS) * 2
    for bad in ("colour=1,2", "mt_error_rate_test=", "mt_error_rate_test=a,b", "mt_error_rate_test=0.1,0.1"):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)


def test_runs_side_by_side_equal_runs_one_after_another(decoder_demo, tmp_path):
    """workers=2 (two processes, one thread each: the decoder demo) trains the same weights, scores and predictions
    as one process with one thread; the world is shared, so only the scheduling differs (a transfer given another
    seed's stage 1, or a seed's runs mixed up, would change the weights)."""
    import torch
    from safetensors.torch import load_file

    two_config, _ = decoder_demo
    config = replace(two_config, output=tmp_path / "one", workers=1)
    shutil.copytree(two_config.output / "pretrained", tmp_path / "one" / "pretrained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        printed = run_demo(config)
    finally:
        torch.set_num_threads(threads)
    side_by_side = run_demo(two_config)  # every run reused: its table as the two processes made it
    assert side_by_side.split("Report")[0] == printed.split("Report")[0]

    def runs(output):  # by run name without the hash, which covers the (different) paths
        made = {}
        for path in (output / setting_name(config) / "runs").rglob("metrics.json"):
            weights = path.parent / "adapter" / "adapter_model.safetensors"
            made[path.parent.name.rsplit("-", 1)[0]] = (
                json.loads(path.read_text())["scores"],
                (path.parent / "predictions.jsonl").read_bytes(),
                load_file(weights) if weights.exists() else None,
            )
        return made

    one, two = runs(tmp_path / "one"), runs(two_config.output)
    assert sorted(one) == sorted(two) and len(one) == 2 * 8  # stage 1 and seven transfer methods per seed
    trained = [name for name in one if one[name][2] is not None]
    assert len(trained) == 2 * 5  # stage 1, lora, input-fusion, flare, flare-mt
    # The ensemble reads its seed's lora run: it starts only once that run is made, in the other process or not.
    folder = two_config.output / setting_name(config) / "runs"
    for seed in config.seeds:
        (lora,) = folder.glob(f"*-lora-seed{seed}-*/metrics.json")
        (ensemble,) = folder.glob(f"*-ensemble-seed{seed}-*/config.json")
        assert ensemble.stat().st_mtime >= lora.stat().st_mtime
    for name in one:
        assert one[name][:2] == two[name][:2], name
        for key, tensor in (one[name][2] or {}).items():
            assert torch.equal(tensor, two[name][2][key]), (name, key)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        replace(config, workers=0)
