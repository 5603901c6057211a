import pytest
import torch
from torch import nn

from dualdiff import Conditioned, ModuleScoreModel, ScoreModel


class CondNet(nn.Module):
    """eps(x, t, c) = x * (1 + c) + t (c = 0 when unconditional)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t, cond=None):
        c = 0.0 if cond is None else float(cond)
        return self.w * x * (1.0 + c) + t.reshape(-1, *([1] * (x.ndim - 1)))


def test_view_binds_condition_and_forwards():
    net = ModuleScoreModel(CondNet())
    x = torch.randn(4, 2)
    for c in (None, 3):
        view = Conditioned(net, c)
        assert isinstance(view, ScoreModel)
        torch.testing.assert_close(view.score(x, 0.4), net.score(x, 0.4, cond=c))
        torch.testing.assert_close(view.eps(x, 0.4), net.eps(x, 0.4, cond=c))
    view = Conditioned(net, 2)
    assert view.schedule is net.schedule
    assert view.module is net.module
    assert view.dtype == torch.float32
    assert list(view.parameters()) == list(net.parameters())
    assert view.eval() is view and not net.module.training


def test_view_refuses_other_condition_and_non_models():
    view = Conditioned(ModuleScoreModel(CondNet()), 1)
    with pytest.raises(ValueError, match=r"Conditioned.score: this view is bound to cond=1"):
        view.score(torch.zeros(2, 2), 0.5, cond=2)
    with pytest.raises(TypeError, match=r"Conditioned: parameter 'model' must be a score model"):
        Conditioned(object(), 1)
