"""The deterministic source pass, the training source cache and its pre-pass: cache off, in memory and on disk, filled
in the first epoch or by the pre-pass, train alike; later epochs (with the pre-pass, all of training) run no source
pass; a resumed run, or a resumed pre-pass, reads the disk cache; and the size check refuses before training."""

from __future__ import annotations

import pytest
import torch
from conftest import ADAPTER_SETTINGS, DECODERS, ENCODER_SIZES, ENCODERS, batch_for, build, randomize_lora
from transformers import TrainerCallback, XLMRobertaConfig, XLMRobertaForSequenceClassification

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter import source_prepass
from flare_xlt.adapter.config import KEY_FIELD
from flare_xlt.adapter.source_cache import SourceCache, open_source_cache, source_key
from flare_xlt.pipeline.run_folder import SOURCE_CACHE
from flare_xlt.pipeline.settings import TrainConfig
from flare_xlt.pipeline.training import train_adapter
from flare_xlt.tasks import PairedCollator

DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
STEPS_PER_EPOCH = 3


def noisy_flare(source_dropout: bool = False, **config):
    """A tiny XLM-R with dropout 0.1 everywhere, so that train mode is random, and a FLARE adapter with random B."""
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(XLMRobertaConfig(**{**ENCODER_SIZES, **DROPOUT}, num_labels=3))
    flare = get_flare_model(model, FlareConfig(source_dropout=source_dropout, modules_to_save=["classifier"], **config))
    randomize_lora(flare)
    return flare.train()


def features() -> list[dict]:
    """Six examples of ragged lengths: a source is sometimes shorter, sometimes longer than its target, so the
    collator pads it to lengths that change with the batch's company."""
    generator = torch.Generator().manual_seed(7)
    rows = []
    for index, (target, source) in enumerate([(3, 6), (7, 2), (5, 5), (2, 8), (6, 3), (4, 7)]):
        target_ids, source_ids = (torch.randint(3, 96, (n,), generator=generator).tolist() for n in (target, source))
        rows.append(
            {
                "input_ids": target_ids,
                "attention_mask": [1] * target,
                "labels": index % 3,
                "source_input_ids": source_ids,
                "source_attention_mask": [1] * source,
            }
        )
    return rows


def test_source_dropout_off_makes_the_source_pass_deterministic():
    batch = batch_for("xlmr-cls")
    for source_dropout in (False, True):
        flare = noisy_flare(source_dropout)
        passes = []
        for _ in range(2):
            with flare.source(batch["source_input_ids"], batch["source_attention_mask"]):
                passes.append(flare.flare_state.source.inputs)
        same = all(torch.equal(passes[0][name], passes[1][name]) for name in passes[0])
        assert same is not source_dropout
        assert all(module.training for module in flare.modules())  # every flag set back


class Recorder(TrainerCallback):
    """Each training forward's loss, each update's gradients, and the source passes run before each step."""

    def __init__(self, flare, stop_at_step: int | None = None) -> None:
        self.flare, self.stop_at_step = flare, stop_at_step
        self.losses, self.gradients, self.source_passes = [], [], []
        flare.register_forward_hook(lambda _m, _a, output: self.losses.append(output.loss.detach().clone()))
        run_source_pass = flare._run_source_pass
        flare._run_source_pass = lambda *args: self.source_passes.append(len(self.losses)) or run_source_pass(*args)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at_step:
            raise KeyboardInterrupt("killed")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.gradients.append({name: p.grad.clone() for name, p in self.flare.named_parameters() if p.grad is not None})


def train(
    tmp_path,
    mode: str,
    stop_at_step: int | None = None,
    save_steps: int = 100,
    flare=None,
    rows: list[dict] | None = None,
    padding_side: str = "right",
    **settings,
) -> Recorder:
    flare = flare if flare is not None else noisy_flare()
    recorder = Recorder(flare, stop_at_step)
    config = TrainConfig(
        batch_size=2,
        epochs=3,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        seed=0,
        save_steps=save_steps,
        source_cache=mode,
        **settings,
    )
    collator = PairedCollator(pad_token_id=0, padding_side=padding_side)
    train_adapter(flare, rows if rows is not None else features(), config, tmp_path / "run", collator, [recorder])
    return recorder


# Source passes before training: the size probe, and the padding check's two (a half source alone, and padded).
OPENING = [0] * 3
# The pre-pass's batches at 8 padded tokens, source lengths 8, 7, 6, 5 and 3 + 2: other company and other padding
# than any training batch's.
PREPASS_TOKENS, PREPASS_BATCHES = 8, 5


def assert_trains_alike(run: Recorder, reference: Recorder) -> None:
    """Equal losses and gradients, up to float32 rounding: the cached rows were computed in another batch."""
    torch.testing.assert_close(torch.stack(run.losses), torch.stack(reference.losses), rtol=1e-5, atol=1e-6)
    assert len(run.gradients) == len(reference.gradients)
    for mine, theirs in zip(run.gradients, reference.gradients, strict=True):
        assert mine.keys() == theirs.keys() and any("lora_A" in name for name in mine)
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_cache_in_memory_and_on_disk_trains_like_no_cache(tmp_path):
    runs = {"off": train(tmp_path / "off", "off")}
    for mode in ("memory", "disk"):
        runs[mode] = train(tmp_path / mode, mode, source_prepass=False)
        runs[f"{mode}-prepass"] = train(tmp_path / f"{mode}-prepass", mode, source_prepass_tokens=PREPASS_TOKENS)
    reference = runs["off"]
    assert len(reference.losses) == 3 * STEPS_PER_EPOCH
    assert reference.source_passes == list(range(3 * STEPS_PER_EPOCH))  # one per step without the cache
    for mode in ("memory", "disk"):
        # The cache's opening passes, then the pre-pass's batches before the first step and none in training.
        assert runs[f"{mode}-prepass"].source_passes == OPENING + [0] * PREPASS_BATCHES
        assert_trains_alike(runs[f"{mode}-prepass"], reference)
        run = runs[mode]
        assert run.source_passes == [*OPENING, *range(STEPS_PER_EPOCH)]  # opening, then the first epoch only
        assert_trains_alike(run, reference)  # later epochs read rows computed in another batch
    assert not (tmp_path / "disk" / "run" / SOURCE_CACHE).exists()  # removed once training is over


@pytest.mark.parametrize(
    ("save_steps", "killed_at", "steps_left", "source_passes", "prepass"),
    [
        # Checkpoints every step: killed in the first epoch, resumed from step 2; the rows of steps 1-2 were written
        # with their checkpoints, so only step 3 (the rest of the first epoch) runs the source pass.
        (1, 2, 3 * STEPS_PER_EPOCH - 2, [*OPENING, 0], False),
        # No checkpoints: killed in the second epoch, the run starts again and finds the first epoch's rows.
        (0, STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH, OPENING, False),
        # The pre-pass wrote every row before the first step: the resumed run runs only the opening passes.
        (1, 2, 3 * STEPS_PER_EPOCH - 2, OPENING, True),
    ],
    ids=["resumed-from-a-checkpoint", "started-again", "after-the-prepass"],
)
def test_a_killed_run_reads_the_disk_cache_again(tmp_path, save_steps, killed_at, steps_left, source_passes, prepass):
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, "disk", stop_at_step=killed_at, save_steps=save_steps, source_prepass=prepass)
    assert list((tmp_path / "run" / SOURCE_CACHE).glob("rank0-*.safetensors"))
    again = train(tmp_path, "disk", save_steps=save_steps, source_prepass=prepass)
    assert len(again.losses) == steps_left
    assert again.source_passes == source_passes  # the opening passes, then what was not written before the kill


def test_a_killed_prepass_computes_only_the_sources_it_had_not_flushed(tmp_path, monkeypatch):
    """Killed in its third batch, the pre-pass had flushed the first two (a shard every FLUSH_SECONDS, here after
    every batch); started again, it computes exactly the other sources, and training runs no source pass."""
    monkeypatch.setattr(source_prepass, "FLUSH_SECONDS", 0.0)
    run_batch, batches, on_disk_when_killed = source_prepass.run_batch, [], []

    def killed_in_batch(number: int):
        def batch(model, sources, *args):
            if len(batches) + 1 == number:  # what a kill now would leave: the shards in the folder
                on_disk = SourceCache(model.source_cache.fingerprint, tmp_path / "run" / SOURCE_CACHE)
                on_disk_when_killed.extend(key for keys in batches for key in keys if key in on_disk)
                raise KeyboardInterrupt("killed")
            batches.append([source[KEY_FIELD] for source in sources])
            return run_batch(model, sources, *args)

        return batch

    monkeypatch.setattr(source_prepass, "run_batch", killed_in_batch(3))
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, "disk", source_prepass_tokens=PREPASS_TOKENS)
    before = [key for keys in batches for key in keys]
    assert len(batches) == 2 and sorted(on_disk_when_killed) == sorted(before)
    batches.clear()
    monkeypatch.setattr(source_prepass, "run_batch", killed_in_batch(0))  # never killed
    again = train(tmp_path, "disk", source_prepass_tokens=PREPASS_TOKENS)
    after = [key for keys in batches for key in keys]
    everything = {source_key(row) for row in features()}
    assert len(after) == len(set(after)) == len(everything) - len(before) and set(after) == everything - set(before)
    assert again.source_passes == OPENING + [0] * len(batches)  # opening, the pre-pass, nothing in training
    assert len(again.losses) == 3 * STEPS_PER_EPOCH


def padding_case(kind: str, padding_side: str):
    torch.manual_seed(0)
    flare = get_flare_model(build(kind), FlareConfig(source_dropout=False, **ADAPTER_SETTINGS.get(kind, {})))
    return flare, features(), PairedCollator(pad_token_id=0, padding_side=padding_side)


@pytest.mark.parametrize(
    ("kind", "padding_side"),
    [(kind, "left") for kind in DECODERS if kind != "xglm"] + [(kind, "right") for kind in (*ENCODERS, "mt5", "xglm")],
)
def test_padding_does_not_change_the_rows_the_cache_keeps(kind, padding_side):
    """Every source alone in its batch, or all six padded to the longest on the model's padding side: the same rows,
    up to float32 rounding, so rows kept from one batch serve every other."""
    flare, rows, collate = padding_case(kind, padding_side)
    batch = collate([{name: value for name, value in row.items() if name.startswith("source_")} for row in rows])
    masks = flare._source_masks(batch["source_input_ids"], batch["source_attention_mask"])
    sources = []
    for max_tokens in (1, 10**6):  # one source per batch; all in one batch
        open_source_cache(flare, rows, "memory", 1.0, announce=False, collate=collate)  # its padding check passes
        assert source_prepass.fill_source_cache(flare, rows, collate, max_tokens, progress=False) == len(rows)
        sources.append(flare.source_cache.bound([row[KEY_FIELD] for row in rows], masks))
    alone, together = sources
    assert alone.inputs.keys() == together.inputs.keys() == flare.fused_modules.keys()
    for name in alone.inputs:
        torch.testing.assert_close(alone.inputs[name], together.inputs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_model_whose_states_move_with_left_padding_is_refused_a_cache():
    """XGLM counts its sinusoidal positions from the first token of the row, pads included: padded on the left, a
    source's states depend on its batch, so no cached row can stand for another batch's."""
    flare, rows, collate = padding_case("xglm", "left")
    with pytest.raises(ValueError, match=r"change with the padding of their batch .*Pad on the right"):
        open_source_cache(flare, rows, "memory", 1.0, announce=False, collate=collate)
    assert flare.source_cache is None


def test_a_run_resumed_after_its_last_step_skips_the_prepass(tmp_path):
    train(tmp_path, "memory", save_steps=1)
    again = train(tmp_path, "memory", save_steps=1)  # resumes from its final checkpoint: nothing left to train
    assert again.losses == [] and again.source_passes == OPENING


def test_processes_share_the_prepass_and_run_as_many_passes(monkeypatch):
    """Two processes: each computes every other batch of the five, the one with two repeats its last, so both run
    three passes (a sharded model's forwards are collective); together they compute every source once."""
    run_batch, passes = source_prepass.run_batch, {0: 0, 1: 0}
    computed = {}
    for rank in (0, 1):

        def counted(model, sources, *args, rank=rank):
            passes[rank] += 1
            return run_batch(model, sources, *args)

        monkeypatch.setattr(source_prepass, "run_batch", counted)
        flare, rows = noisy_flare(), features()
        cache = open_source_cache(flare, rows, "memory", 1.0, announce=False)
        computed[rank] = source_prepass.fill_source_cache(
            flare, rows, PairedCollator(pad_token_id=0), PREPASS_TOKENS, rank=rank, world_size=2, progress=False
        )
        computed[rank, "keys"] = {row[KEY_FIELD] for row in rows if row[KEY_FIELD] in cache}
    assert passes == {0: 3, 1: 3} and computed[0] + computed[1] == len(features())
    assert computed[0, "keys"].isdisjoint(computed[1, "keys"])
    assert computed[0, "keys"] | computed[1, "keys"] == {source_key(row) for row in features()}


def test_prepass_trains_like_no_cache_on_a_left_padded_decoder(tmp_path):
    """A causal LM padded on the left (rotary positions count from the first pad): the pre-pass, padded by the
    training collator in its own batches, gives the rows the training steps compute."""

    def flare():
        torch.manual_seed(0)
        model = get_flare_model(build("llama"), FlareConfig(source_dropout=False))
        randomize_lora(model)
        return model.train()

    rows = [{**row, "labels": row["input_ids"]} for row in features()]
    reference = train(tmp_path / "off", "off", flare=flare(), rows=rows, padding_side="left")
    run = train(tmp_path / "memory", "memory", flare=flare(), rows=rows, padding_side="left", source_prepass_tokens=8)
    assert run.source_passes == OPENING + [0] * PREPASS_BATCHES
    assert_trains_alike(run, reference)


def test_size_check_and_settings_are_refused_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"above the limit\. Raise source_cache_max_gb, use source_cache=disk"):
        open_source_cache(noisy_flare(), features(), "memory", max_gb=1e-6)
    assert noisy_flare().source_cache is None
    with pytest.raises(ValueError, match="set source_dropout to false"):
        open_source_cache(noisy_flare(source_dropout=True), features(), "memory", max_gb=1.0)
    with pytest.raises(ValueError, match="mask_source_padding=false"):
        open_source_cache(noisy_flare(mask_source_padding=False), features(), "disk", 1.0, tmp_path)
    with pytest.raises(ValueError, match="use source_cache=disk, whose shards the processes share"):
        open_source_cache(noisy_flare(), features(), "memory", max_gb=1.0, world_size=2)
    with pytest.raises(ValueError, match="valid choices: off, memory, disk"):
        TrainConfig(source_cache="ram")
    flare = noisy_flare()
    open_source_cache(flare, features(), "memory", max_gb=1.0)
    # 6 sources of 31 tokens; one captured (d=32) float32 tensor per layer: q and value of a layer share it.
    assert f"about {31 * 2 * 32 * 4 / 1e3:.1f} kB in memory" in capsys.readouterr().out


def test_disk_shards_are_shared_between_processes_and_belong_to_one_fingerprint(tmp_path):
    flare, rows = noisy_flare(), features()[:2]
    cache = open_source_cache(flare, rows, "disk", 1.0, tmp_path, rank=1)
    batch = PairedCollator(pad_token_id=0)(rows)
    flare(**batch)
    cache.flush()
    masks = flare._source_masks(batch["source_input_ids"], batch["source_attention_mask"].bool())
    reader = SourceCache(cache.fingerprint, tmp_path, rank=0)  # another process finds what rank 1 wrote
    source = reader.bound(batch["source_keys"], masks)
    assert source is not None and source.inputs.keys() == flare.flare_state.source.inputs.keys()
    for name, tensor in source.inputs.items():
        expected = flare.flare_state.source.inputs[name] * masks["input"].unsqueeze(-1)
        assert torch.equal(tensor, expected), name
    stale = SourceCache("another-model", tmp_path, rank=1)  # rank 1's shard of another fingerprint is dropped
    assert len(stale) == 0 and not list(tmp_path.glob("rank1-*"))


def test_fingerprint_follows_every_frozen_weight_without_a_float64_copy_of_it(monkeypatch):
    """The fingerprint changes when one element of a frozen weight does, and summing a weight never allocates more
    than one float64 chunk: a whole-tensor sum(dtype=float64) copied e5-small's embedding (733 MiB, the cache runs'
    measured peak)."""
    import flare_xlt.adapter.source_cache as source_cache
    from benchmarks.harness import peak_memory

    monkeypatch.setattr(source_cache, "CHECKSUM_CHUNK", 256)
    flare = noisy_flare()
    before = source_cache.cache_fingerprint(flare, {})
    embeddings = flare.get_base_model().roberta.embeddings.word_embeddings.weight
    with torch.no_grad():
        embeddings[5, 3] += 1e-3
    assert source_cache.cache_fingerprint(flare, {}) != before
    largest = max(p.numel() for p in flare.parameters() if not p.requires_grad)
    peak = peak_memory(lambda: source_cache.cache_fingerprint(flare, {}), torch.device("cpu"))
    assert largest >= 8 * 256 and peak < 4 * largest, (peak, largest)  # a float64 copy would be 8 * largest
