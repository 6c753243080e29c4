"""N:M and unstructured masks on hand-made tensors: exact results."""

import pytest
import torch

from edgeprune.errors import EdgepruneError
from edgeprune.sparsity import SparsitySpec, check_nm, is_nm, parse_sparsity, to_nm, topk_mask


def test_two_of_four_keeps_largest_in_each_group():
    w = torch.arange(1.0, 9.0).reshape(1, 8)
    kept = w * to_nm(w.abs(), 2, 4)
    assert kept.tolist() == [[0, 0, 3, 4, 0, 0, 7, 8]]


def test_to_nm_on_scores_not_weights():
    scores = torch.tensor([[9.0, 1.0, 8.0, 2.0, 0.1, 0.3, 0.2, 0.4]])
    assert to_nm(scores, 2, 4).tolist() == [[True, False, True, False, False, True, False, True]]


def test_to_nm_projects_an_existing_mask_without_adding_weights():
    mask = torch.tensor([[True, True, True, False, False, False, False, True]])
    projected = to_nm(mask, 2, 4)
    assert (projected & ~mask).sum() == 0
    assert projected.reshape(-1, 4).sum(1).le(2).all()


def test_ties_break_to_the_lower_index():
    assert to_nm(torch.ones(1, 4), 2, 4).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (4, 8), (2, 8), (3, 6)])
def test_any_nm_exact_counts(n, m):
    scores = torch.randn(16, 48, generator=torch.Generator().manual_seed(n * 10 + m))
    mask = to_nm(scores, n, m)
    assert mask.reshape(-1, m).sum(1).eq(n).all()
    assert is_nm(scores * mask, n, m)
    assert not is_nm(scores, n, m)


def test_unstructured_is_exact_per_row():
    scores = torch.randn(10, 33, generator=torch.Generator().manual_seed(1))
    mask = topk_mask(scores, SparsitySpec(0.5))
    assert mask.sum(1).eq(33 - 16).all()
    # the pruned entries are the smallest of each row
    assert (scores.masked_fill(mask, float("-inf")).max(1).values <= scores.masked_fill(~mask, float("inf")).min(1).values).all()


@pytest.mark.parametrize("text,expected", [("0.5", SparsitySpec(0.5)), ("50%", SparsitySpec(0.5)), ("2:4", SparsitySpec(0.5, 2, 4)), (" 4 : 8 ", SparsitySpec(0.5, 4, 8))])
def test_parse_sparsity(text, expected):
    assert parse_sparsity(text) == expected


@pytest.mark.parametrize("bad", ["1.5", "0", "3:2", "2:0", "0:4", "4:4", "half", "-0.1", "1"])
def test_parse_sparsity_rejects_bad_specs(bad):
    with pytest.raises(EdgepruneError) as info:
        parse_sparsity(bad)
    assert "\n" not in str(info.value)


def test_check_nm_reports_violations():
    lin = torch.nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1, 2, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0.0]]))
    (report,) = check_nm(None, 2, 4, layers={"lin": lin})
    assert (report.groups, report.violations) == (4, 1)
    assert not report.ok
