"""The BP / BPP / BPBP models that learn a linear transform (Dao, Gu, Eichhorn, Rudra & Ré, "Learning
Fast Algorithms for Linear Transforms Using Butterfly Factorizations", ICML 2019, Sec. 4.1), for the
transform-learning task (:mod:`unroll_cli.tasks.transforms`).

The model is :func:`unroll_cli.models.butterfly.bp_model`: relaxed learnable permutations ``P`` and
ortho-initialised butterflies ``B``, complex when the target is. ``model.kind=paper`` takes the model
the authors' ``learning_transforms/run_exp.sh`` uses for the target (the task passes it as
``paper_kind``), so that one sweep over transforms runs the paper's table with one model config.
"""
from __future__ import annotations

from torch import Tensor, nn

from unroll_cli.schema import constrained, register_schema
from unroll_cli.models.butterfly import BP_KINDS, LearnedPermutation, bp_model


@register_schema("model", "bp")
class BPModelConfig:
    """A product of learned permutations and butterflies (Dao et al. 2019, Sec. 4.1)."""

    _target_: str = "unroll_cli.models.transform_models.BPModel"
    name: str = "bp"
    task: str = "transform"  # the kind of data the model fits
    kind: str = constrained("paper", "paper (the authors' model for the target: BPP for dct and dst, BPBP for "
                            "convolution, BP otherwise), BP, BPP or BPBP", lambda v: v in ("paper", *BP_KINDS))


class BPModel(nn.Module):
    """``bp_model(n, kind, complex)``, read as the matrix it applies to row vectors: ``forward(x)`` is
    ``x M^T``, so the identity gives ``M^T``. ``kind="paper"``: the task's ``paper_kind``."""

    def __init__(self, n: int, complex: bool, paper_kind: str, kind: str = "paper"):
        super().__init__()
        self.kind = paper_kind if kind == "paper" else kind
        self.product = bp_model(n, self.kind, complex=complex)

    def prunable_parameters(self) -> list[str]:
        """The butterflies' twiddles, for ``+callbacks=prune``; a learned permutation's logits are not
        weights."""
        permutations = {f"{prefix}.{name}" for prefix, module in self.named_modules()
                        if isinstance(module, LearnedPermutation) for name, _ in module.named_parameters()}
        return [name for name, p in self.named_parameters() if p.requires_grad and p.dim() >= 2
                and name not in permutations]

    def forward(self, x: Tensor, depth: int | None = None) -> Tensor:
        """The transform of the rows of ``x``; ``depth`` is ignored (no unrolled layers)."""
        return self.product(x)
