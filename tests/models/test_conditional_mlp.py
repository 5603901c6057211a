"""CondMLPScoreNet: condition handling, null class, errors, and the score-model wrapping."""

import pytest
import torch

from dualdiff import Conditioned, ModuleScoreModel
from dualdiff.models import NULL_CLASS, CondMLPScoreNet


def _net() -> CondMLPScoreNet:
    torch.manual_seed(0)
    net = CondMLPScoreNet(dim=2, n_classes=3, hidden=16, depth=2, time_embedding_dim=8)
    torch.nn.init.normal_(net.output.weight)  # the read-out starts at zero: make it non-trivial
    return net


def test_condition_forms_agree_per_sample():
    net = _net()
    x, t = torch.randn(5, 2), torch.rand(5)
    labels = torch.tensor([0, 2, NULL_CLASS, 1, NULL_CLASS])
    mixed = net(x, t, labels)
    for i, c in enumerate(labels.tolist()):
        one = net(x[i : i + 1], t[i : i + 1], None if c == NULL_CLASS else c)
        torch.testing.assert_close(mixed[i : i + 1], one)
    torch.testing.assert_close(net(x, t, torch.tensor(2)), net(x, t, 2))
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((5,), NULL_CLASS)))
    # classes differ from each other and from the null class
    assert not torch.allclose(net(x, t, 0), net(x, t, 1))
    assert not torch.allclose(net(x, t, 0), net(x, t))


def test_untrained_network_predicts_zero_noise():
    net = CondMLPScoreNet(dim=2, n_classes=4)
    assert torch.equal(net(torch.randn(3, 2), 0.3, 1), torch.zeros(3, 2))


def test_views_of_the_wrapped_network_are_its_conditions():
    net = _net()
    model = ModuleScoreModel(net, prediction="eps")
    x = torch.randn(4, 2)
    sigma = model.schedule.sigma(torch.tensor(0.4))
    for c in (None, 0, 2):
        view = Conditioned(model, c)
        torch.testing.assert_close(view.score(x, 0.4), -net(x, torch.full((4,), 0.4), c) / sigma)


def test_bad_conditions_and_arguments_raise_typed_errors():
    net = _net()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"CondMLPScoreNet.forward: parameter 'cond' must be a "
                       r"class in \[0, 3\).*got 3"):
        net(x, 0.5, 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) or -1.*got -2"):
        net(x, 0.5, torch.tensor([0, 1, -2, 0]))
    with pytest.raises(ValueError, match=r"parameter 'cond' must have shape \(\) or \(4,\)"):
        net(x, 0.5, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"parameter 'cond' must be an integer tensor.*float32"):
        net(x, 0.5, torch.zeros(4))
    with pytest.raises(TypeError, match=r"parameter 'cond' must be None, an int class.*str"):
        net(x, 0.5, "cat")
    with pytest.raises(TypeError, match=r"got bool"):
        net(x, 0.5, True)
    with pytest.raises(ValueError, match=r"parameter 'x' must have shape \(n, 2\), got \(4, 3\)"):
        net(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"CondMLPScoreNet: parameter 'n_classes' must be an "
                       r"int >= 1, got 0"):
        CondMLPScoreNet(dim=2, n_classes=0)
