"""Translation split over the processes of `torchrun` / `accelerate launch`: each process translates a share of the
distinct texts, then every process receives all translations, so each ends with the output of a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Shards:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Shards:
        """The launcher's RANK / WORLD_SIZE / LOCAL_RANK; one process without a launcher. Starts a gloo process group
        when there are several: it only carries the translated strings, so it needs no GPU collective backend."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        """The process that writes outputs and prints."""
        return self.rank == 0

    def take(self, texts: list[str]) -> list[str]:
        """This process's share. Texts are dealt in length order, so every share gets long and short ones alike."""
        if self.world == 1:
            return texts
        return sorted(texts, key=len)[self.rank :: self.world]

    def gather(self, part: dict) -> list[dict]:
        """Every process's `part`, in rank order, on every process."""
        if self.world == 1:
            return [part]
        parts: list = [None] * self.world
        dist.all_gather_object(parts, part)
        return parts

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
