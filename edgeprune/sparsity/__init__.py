"""Sparsity: N:M and unstructured patterns defined once (patterns.py: parsing specs, projecting scores onto masks,
checking), channel permutations that keep more of the important weights (permute.py), and the packed N:M storage
format (packed.py, imported on its own). This file only re-exports the patterns.
"""

from edgeprune.sparsity.patterns import NMReport, SparsitySpec, check_nm, is_nm, parse_sparsity, to_nm, topk_mask

__all__ = ["SparsitySpec", "parse_sparsity", "topk_mask", "to_nm", "is_nm", "check_nm", "NMReport"]
