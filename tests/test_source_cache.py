"""The deterministic source pass and the training source cache: cache off, in memory and on disk train alike, later
epochs run no source pass, a resumed run reads the disk cache, and the size check refuses before training."""

from __future__ import annotations

import pytest
import torch
from conftest import ENCODER_SIZES, batch_for, randomize_lora
from transformers import TrainerCallback, XLMRobertaConfig, XLMRobertaForSequenceClassification

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter.source_cache import SourceCache, open_source_cache
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


def train(tmp_path, mode: str, stop_at_step: int | None = None, save_steps: int = 100) -> Recorder:
    flare = noisy_flare()
    recorder = Recorder(flare, stop_at_step)
    config = TrainConfig(
        batch_size=2, epochs=3, learning_rate=1e-2, warmup_ratio=0.0, seed=0, save_steps=save_steps, source_cache=mode
    )
    train_adapter(flare, features(), config, tmp_path / "run", PairedCollator(pad_token_id=0), [recorder])
    return recorder


def test_cache_in_memory_and_on_disk_trains_like_no_cache(tmp_path):
    runs = {mode: train(tmp_path / mode, mode) for mode in ("off", "memory", "disk")}
    reference = runs["off"]
    assert len(reference.losses) == 3 * STEPS_PER_EPOCH
    assert reference.source_passes == list(range(3 * STEPS_PER_EPOCH))  # one per step without the cache
    for mode in ("memory", "disk"):
        run = runs[mode]
        assert run.source_passes == [0, *range(STEPS_PER_EPOCH)]  # the size probe, then the first epoch only
        # Later epochs read tensors computed in another batch (other padding): equal up to float32 rounding.
        torch.testing.assert_close(torch.stack(run.losses), torch.stack(reference.losses), rtol=1e-5, atol=1e-6)
        assert len(run.gradients) == len(reference.gradients)
        for mine, theirs in zip(run.gradients, reference.gradients, strict=True):
            assert mine.keys() == theirs.keys() and any("lora_A" in name for name in mine)
            for name in mine:
                torch.testing.assert_close(mine[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not (tmp_path / "disk" / "run" / SOURCE_CACHE).exists()  # removed once training is over


@pytest.mark.parametrize(
    ("save_steps", "killed_at", "steps_left", "source_passes"),
    [
        # Checkpoints every step: killed in the first epoch, resumed from step 2; the rows of steps 1-2 were written
        # with their checkpoints, so only step 3 (the rest of the first epoch) runs the source pass.
        (1, 2, 3 * STEPS_PER_EPOCH - 2, [0, 0]),
        # No checkpoints: killed in the second epoch, the run starts again and finds the first epoch's rows.
        (0, STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH, [0]),
    ],
    ids=["resumed-from-a-checkpoint", "started-again"],
)
def test_a_killed_run_reads_the_disk_cache_again(tmp_path, save_steps, killed_at, steps_left, source_passes):
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, "disk", stop_at_step=killed_at, save_steps=save_steps)
    assert list((tmp_path / "run" / SOURCE_CACHE).glob("rank0-*.safetensors"))
    again = train(tmp_path, "disk", save_steps=save_steps)
    assert len(again.losses) == steps_left
    assert again.source_passes == source_passes  # the size probe, then what was not written before the kill


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
