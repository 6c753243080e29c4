"""Channel permutations for N:M: they raise the kept score and leave the dense model's function unchanged."""

import copy

import pytest
import torch

from conftest import make_tiny_bert, make_tiny_llama
from edgeprune.models import get_adapter
from edgeprune.pruning import make_pruner, prune_model
from edgeprune.sparsity import SparsitySpec, check_nm
from edgeprune.sparsity.permute import apply_permutation, kept_score, nm_permutation, segment_permutations


def test_permutation_spreads_important_channels():
    # columns 0-3 are the important ones and share one 2:4 group: projection must drop two of them
    scores = torch.full((4, 8), 0.1)
    scores[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    perm = nm_permutation(scores, 2, 4)
    assert sorted(perm.tolist()) == list(range(8))
    assert kept_score(scores, 2, 4) == pytest.approx(4 * (7 + 0.2))
    assert kept_score(scores[:, perm], 2, 4) == pytest.approx(4 * 10.0)  # all four important channels kept


def test_permutation_never_worse_on_random_scores():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.rand(16, 64, generator=g) ** 3
        perm = nm_permutation(scores, 2, 4)
        assert kept_score(scores[:, perm], 2, 4) >= kept_score(scores, 2, 4)


def _permute_all(model):
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(1)
    for block in adapter.blocks(model):
        linears = adapter.block_linears(block)
        for cp in adapter.permutations(block):
            cols = linears[cp.consumer].in_features
            scores = torch.rand(linears[cp.consumer].out_features, cols, generator=g)
            perms = segment_permutations(scores, cp.consumer_segments, cp.producer_segments, 2, 4)
            assert not torch.equal(perms, torch.arange(perms.shape[1]).expand_as(perms))
            apply_permutation(linears, cp.consumer, cp.producers, perms, cp.consumer_segments)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_permuted_dense_model_computes_the_same(tiny_tokenizer, kind):
    model = make_tiny_llama(len(tiny_tokenizer)) if kind == "llama" else make_tiny_bert(len(tiny_tokenizer))
    ids = torch.randint(0, len(tiny_tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids)[0]
        original = copy.deepcopy(model)
        _permute_all(model)
        after = model(input_ids=ids)[0]
    changed = sum(not torch.equal(a, b) for a, b in zip(original.parameters(), model.parameters()))
    assert changed > 0
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_prune_with_permutation_is_nm_and_reports_gain(tiny_tokenizer):
    model = make_tiny_llama(len(tiny_tokenizer))
    adapter = get_adapter(model)
    ids = torch.randint(0, len(tiny_tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    report = prune_model(model, adapter, make_pruner("wanda"), SparsitySpec(0.5, 2, 4), ids, permute=True)
    assert all(r.ok for r in check_nm(model, 2, 4))
    assert len(report.permutations) == 2 * 2
    assert all(p["kept_score_gain"] >= 0 for p in report.permutations)
    assert any(p["kept_score_gain"] > 0 for p in report.permutations)
