"""Adam with TensorFlow 1's epsilon (``optim=adam_tf``), for runs that train as TF code did.

``tf.train.AdamOptimizer`` (the optimizer of the ALISTA and LISTA-CPSS code) adds epsilon before the
bias correction, the "epsilon hat" form of Kingma & Ba 2015 (end of Sec. 2):

    theta <- theta - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

which is PyTorch's ``torch.optim.Adam`` (``m_hat / (sqrt(v_hat) + eps)``) with eps replaced by
``eps / sqrt(1 - b2^t)``: 32x larger at t = 1, 3.2x at t = 100, tending to eps. It matters where
eps does: under ``trainer.decay_mode=gradient`` an earlier layer's scaled gradient meets eps, more so
in a stage's first few hundred steps. t counts the optimizer's steps, one per ``step()`` as TF's shared
``beta2_power``; it is read back from the parameters' state, so a resumed optimizer goes on counting.
"""
from __future__ import annotations

import math

import torch


class TFAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose eps is applied as TensorFlow 1's (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.defaults["tf_eps"] = eps  # a group added later gets it too (add_param_group)
        for group in self.param_groups:
            group.setdefault("tf_eps", group["eps"])
        self.register_step_pre_hook(self.set_eps)

    def steps_taken(self) -> int:
        return max((int(state["step"]) for state in self.state.values() if "step" in state), default=0)

    @staticmethod
    def set_eps(optimizer: "TFAdam", args, kwargs) -> None:
        """Step pre-hook (not an override of ``step``: torch wraps an overriding ``step`` and the
        inherited one each with the step hooks, which would then run twice)."""
        t = optimizer.steps_taken() + 1
        for group in optimizer.param_groups:
            group["eps"] = group["tf_eps"] / math.sqrt(1.0 - group["betas"][1] ** t)
