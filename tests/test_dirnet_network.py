"""DIRNet's ConvNet regressor: architecture of §2, Table 1 variants, control grid, identity, gradients, learning."""
import pytest
import torch
from torch import nn

from DeepRegistrationLib.core.spatial_transformer import warp_voxels
from DeepRegistrationLib.networks.dirnet_regressor import VARIANTS, DIRNet, DIRNetConfig
from DeepRegistrationLib.training.dirnet_trainer import ncc_loss


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("shape,downsamplings,expected", [
    ((96, 112), 3, (12, 14)), ((256, 256), 4, (16, 16)), ((28, 28), 2, (7, 7)),
    ((32, 40, 32), 2, (8, 10, 8)), ((32, 40, 32), 3, (4, 5, 4)),
])
def test_control_grid_follows_input_size_and_depth(shape, downsamplings, expected):
    net = DIRNet(DIRNetConfig(ndim=len(shape), channels=4, downsamplings=downsamplings)).eval()
    with torch.no_grad():
        control = net.regressor(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    assert control.shape == (1, len(shape), *expected)


def test_input_not_divisible_by_the_downsampling_is_refused():
    net = DIRNet(DIRNetConfig(ndim=2, channels=4, downsamplings=3))
    with pytest.raises(ValueError, match="not divisible by 8"):
        net(torch.rand(1, 1, 30, 32), torch.rand(1, 1, 30, 32))


def test_baseline_architecture_is_that_of_section_2():
    net = DIRNet(DIRNetConfig(ndim=2, channels=16)).regressor
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4 + [(1, 1)] * 3
    assert all(c.padding == (1, 1) for c in convs[:4])  # zero padding
    assert convs[0].in_channels == 2 and convs[-1].out_channels == 2
    assert count(net, nn.AvgPool2d) == 4 and count(net, nn.MaxPool2d) == 0
    assert count(net, nn.BatchNorm2d) == 7  # every layer
    assert count(net, nn.ELU) == 6  # all but the linear output layer
    assert isinstance(net.layers[-1][-1], nn.BatchNorm2d)


def test_table1_variants_build_and_differ_as_described():
    built = {name: DIRNet(DIRNetConfig.variant(name, ndim=2, channels=4, downsamplings=3)) for name in VARIANTS}
    assert count(built["A1"], nn.MaxPool2d) == 3 and count(built["A1"], nn.AvgPool2d) == 0
    strided = [m for m in built["A2"].modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3 and count(built["A2"], nn.AvgPool2d) == 0
    assert built["B1"].config.spline_order == 2
    convs3 = lambda n: sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in n.modules())  # noqa: E731
    assert convs3(built["C1"]) == convs3(built["BL"]) + 2
    fixed, moving = torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48)
    for name, net in built.items():
        warped, u, control = net(fixed, moving)
        assert warped.shape == fixed.shape and u.shape == (2, 2, 32, 48) and control.shape == (2, 2, 4, 6), name


def test_3d_network_outputs_three_displacement_channels():
    net = DIRNet(DIRNetConfig(ndim=3, channels=4, downsamplings=2))
    warped, u, control = net(torch.rand(2, 1, 16, 20, 12), torch.rand(2, 1, 16, 20, 12))
    assert u.shape == (2, 3, 16, 20, 12) and control.shape == (2, 3, 4, 5, 3)


def test_zero_regressor_output_is_the_identity():
    net = DIRNet(DIRNetConfig(ndim=2, channels=4, downsamplings=2)).eval()
    output_bn = net.regressor.layers[-1][1]
    nn.init.zeros_(output_bn.weight)
    nn.init.zeros_(output_bn.bias)
    moving = torch.rand(3, 1, 24, 32)
    with torch.no_grad():
        warped, u, control = net(torch.rand(3, 1, 24, 32), moving)
    assert torch.count_nonzero(control) == 0 and torch.count_nonzero(u) == 0
    torch.testing.assert_close(warped, moving, atol=2e-5, rtol=0)


def test_gradients_flow_from_the_ncc_loss_to_every_regressor_layer():
    torch.manual_seed(0)
    net = DIRNet(DIRNetConfig(ndim=2, channels=4, downsamplings=2))
    fixed = torch.rand(4, 1, 16, 16)
    moving = torch.roll(fixed, 1, dims=-1)
    warped, _, _ = net(fixed, moving)
    ncc_loss(warped, fixed).backward()
    convs = [m for m in net.regressor.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.grad is not None and float(c.weight.grad.abs().sum()) > 0 for c in convs)


def test_training_reduces_the_ncc_loss_of_a_shifted_pair():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = lambda cx, cy: torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 30.0)  # noqa: E731
    fixed = torch.stack([blob(15, 16), blob(17, 14)])[:, None]
    u_true = torch.zeros(2, 2, 32, 32)
    u_true[:, 0] = 2.0
    moving = warp_voxels(fixed, -u_true)  # the moving image is the fixed one shifted by +2 voxels in x
    net = DIRNet(DIRNetConfig(ndim=2, channels=8, downsamplings=2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        warped, _, _ = net(fixed, moving)
        loss = ncc_loss(warped, fixed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    before = float(ncc_loss(moving, fixed))
    assert losses[-1] < before - 0.5 * (before + 1.0)  # at least half of the gap to a perfect NCC closed
