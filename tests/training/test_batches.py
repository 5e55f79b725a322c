"""Tests of pyro_vae.training.batches and of training on rows read from a mapped file.

The mapped path must give the same minibatches and the same training history, bit for
bit, as the float32 tensor it replaces; each rank's shard must be the positions
DistributedSampler gives it; a streamed statistic must equal the whole-tensor one when
the rows fit in one block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data import datasets as D
from pyro_vae.data.rows import ArrayRows, TensorRows
from pyro_vae.data.transforms import binarize
from pyro_vae.inference.evaluation import evaluate_elbo
from pyro_vae.model.build import build_vae
from pyro_vae.training.batches import block_seed, minibatches, streamed_mean
from pyro_vae.training.loop import fit
from pyro_vae.training.parallel import DataParallel


@pytest.fixture
def grey_file(tmp_path):
    """150 uint8 rows of 12 grey levels, as IDX images would be (3 x 4), in an .npy file."""
    x = np.random.default_rng(0).integers(0, 256, size=(150, 3, 4), dtype=np.uint8)
    path = tmp_path / "grey.npy"
    np.save(path, x)
    return path


@pytest.mark.parametrize("prefetch", [False, True])
def test_mapped_rows_give_the_same_minibatches_as_the_tensor(grey_file, prefetch):
    memory = D.load_dataset(str(grey_file), storage="memory", seed=1)
    mapped = D.load_dataset(str(grey_file), storage="mapped", seed=1)
    order = torch.randperm(len(mapped.train), generator=torch.Generator().manual_seed(5))
    want = list(minibatches(TensorRows(torch.from_numpy(memory.train)), order, 16, torch.device("cpu")))
    got = list(minibatches(mapped.train, order, 16, torch.device("cpu"), prefetch=prefetch))
    assert len(got) == len(want) == 9
    for (rows_a, xa), (rows_b, xb) in zip(want, got, strict=True):
        assert torch.equal(rows_a, rows_b) and torch.equal(xa, xb)


@pytest.mark.parametrize("prefetch", [False, True])
def test_fit_on_mapped_rows_trains_exactly_like_the_tensor(grey_file, prefetch):
    """Same seed, same data: the same history and the same parameters, bit for bit
    (validation included: a small split is evaluated in one block)."""
    config = TrainConfig(epochs=3, batch_size=32, seed=7)

    def train(storage: str):
        data = D.load_dataset(str(grey_file), storage=storage, seed=1)
        as_input = (lambda x: x) if data.mapped else torch.from_numpy
        torch.manual_seed(0)
        vae = build_vae(ModelConfig(x_dim=12, z_dim=2, hidden=(8,)))
        history = fit(
            vae,
            as_input(data.train),
            as_input(data.val),
            config,
            progress=False,
            prefetch=prefetch,
            transform=lambda x: binarize(x / 255, "dynamic"),
        )
        return [(h.train_loss, h.val_elbo) for h in history], vae.state_dict()

    (history_memory, state_memory), (history_mapped, state_mapped) = train("memory"), train("mapped")
    assert history_mapped == history_memory and all(np.isfinite(history_mapped).ravel())
    assert all(torch.equal(state_memory[k], state_mapped[k]) for k in state_memory)


def test_fit_reads_each_training_row_once_per_epoch(grey_file):
    """Minibatches ask the file for their own rows only: one epoch reads every row once."""
    data = D.load_dataset(str(grey_file), storage="mapped", seed=1)
    read: list[np.ndarray] = []

    class Recording(ArrayRows):
        def read(self, index):
            if not isinstance(index, slice):
                read.append(np.asarray(index).copy())
            return super().read(index)

    train = data.train
    recording = Recording(train._array, scale=255.0, index=train._index, file=train.file)
    vae = build_vae(ModelConfig(x_dim=12, z_dim=2, hidden=(8,)))
    fit(
        vae,
        recording,
        None,
        TrainConfig(epochs=1, batch_size=32),
        progress=False,
        transform=lambda x: binarize(x, "dynamic"),
    )
    assert sorted(np.concatenate(read).tolist()) == list(range(len(train)))


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 3), (3, 4), (1, 2)])
def test_each_rank_takes_the_positions_distributed_sampler_gives_it(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    for rank in range(world):
        replica = DataParallel.__new__(DataParallel)  # only shard's arithmetic, no group needed
        replica.rank, replica.world_size = rank, world
        want = order[torch.tensor(list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)))]
        assert torch.equal(replica.shard(order), want)


def test_streamed_mean_is_the_whole_tensors_value_in_one_block_and_close_in_many(grey_file):
    data = D.load_dataset(str(grey_file), storage="mapped", seed=1, val_fraction=0.4)
    vae = build_vae(ModelConfig(x_dim=12, z_dim=2, hidden=(8,)))

    def elbo(x, _, seed):
        return evaluate_elbo(vae, x, particles=2, seed=seed, transform=lambda b: binarize(b / 255, "dynamic"))

    whole = elbo(torch.from_numpy(data.val.read(slice(None))), None, 3)
    cpu = torch.device("cpu")
    assert streamed_mean(elbo, data.val, None, 3, cpu) == whole
    blocks = streamed_mean(elbo, data.val, None, 3, cpu, rows=7)  # 60 rows: 9 blocks, other draws
    assert blocks != whole and abs(blocks - whole) < 0.05 * abs(whole)
    assert block_seed(3, 0) == 3 and len({block_seed(3, b) for b in range(9)}) == 9
