"""The CVAE: parameter counts, shapes, batched == step-by-step, reparameterisation."""

import pytest
import torch

from model.clip import clip_loss, clip_loss_stepwise, rollout
from model.net import CVAE, count_parameters, reparameterize


def test_parameter_counts_match_the_template():
    m = CVAE()
    counts = {name: count_parameters(part) for name, part in m.named_children()}
    assert counts == {
        "frame_enc": 193_568,
        "pose_enc": 16_832,
        "posterior": 8_289,
        "fusion": 617_768,
        "generator": 749_163,
    }
    assert count_parameters(m) == 1_585_620


def test_step_shapes():
    m = CVAE(16, 8, 4, 16)
    x = torch.rand(2, 3, 8, 16)
    pred, mu, logvar = m.step(x, x, x)
    assert pred.shape == (2, 3, 8, 16) and mu.shape == logvar.shape == (2, 4, 8, 16)


def test_reparameterize_uses_eps_and_tensor_device():
    mu, logvar = torch.zeros(3, 2), torch.full((3, 2), 2 * torch.log(torch.tensor(3.0)).item())
    eps = torch.ones(3, 2)
    assert torch.allclose(reparameterize(mu, logvar, eps), torch.full((3, 2), 3.0))
    assert reparameterize(mu, logvar).device == mu.device


def _data(seed=0, b=2, length=6):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, length, 3, 8, 16, generator=g)
    poses = torch.rand(b, length, 3, 8, 16, generator=g)
    eps = torch.randn(length - 1, b, 4, 8, 16, generator=g)
    return frames, poses, eps


@pytest.mark.parametrize("clamp", [True, False])
def test_batched_equals_stepwise_loss_and_grads(clamp: bool):
    frames, poses, eps = _data()
    for tf in (True, False):
        for chunk in (0, 3):
            torch.manual_seed(0)
            a, b = CVAE(16, 8, 4, 16), CVAE(16, 8, 4, 16)
            b.load_state_dict(a.state_dict())
            la = clip_loss(a, frames, poses, 0.7, tf, eps, chunk, clamp_feedback=clamp)
            lb = clip_loss_stepwise(b, frames, poses, 0.7, tf, eps, clamp_feedback=clamp)
            torch.testing.assert_close(la.loss, lb.loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(la.kl, lb.kl, rtol=1e-5, atol=1e-6)
            la.loss.backward()
            lb.loss.backward()
            for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
                torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
            # BatchNorm running statistics see the same per-step batches as the template
            torch.testing.assert_close(a.pose_enc[2].running_mean, b.pose_enc[2].running_mean)


def test_batched_without_teacher_forcing_under_bf16_autocast():
    # The first frame is fp32 and the fed-back predictions bf16: the batched form stacks them into one call.
    frames, poses, eps = _data(3)
    m = CVAE(16, 8, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la = clip_loss(m, frames, poses, 0.5, False, eps, 0)
        lb = clip_loss_stepwise(m, frames, poses, 0.5, False, eps)
    torch.testing.assert_close(la.loss, lb.loss, rtol=1e-2, atol=1e-2)  # bf16 keeps ~3 significant digits
    la.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def _frame_encoder_inputs(m: CVAE) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    m.frame_enc.register_forward_hook(lambda _mod, args, _out: seen.append(args[0].detach()))
    return seen


@pytest.mark.parametrize("stepwise", [False, True])
def test_fed_back_predictions_are_clamped_to_the_frame_range(stepwise: bool):
    frames, poses, eps = _data(4)
    m = CVAE(16, 8, 4, 16)
    with torch.no_grad():
        m.generator[-1].bias.fill_(5.0)  # every prediction overshoots the [0, 1] frame range
    seen = _frame_encoder_inputs(m)

    def loss(clamp: bool) -> float:
        seen.clear()
        if stepwise:
            return float(clip_loss_stepwise(m, frames, poses, 1.0, False, eps, clamp_feedback=clamp).loss.detach())
        return float(clip_loss(m, frames, poses, 1.0, False, eps, clamp_feedback=clamp).loss.detach())

    clamped = loss(True)
    assert seen and all(x.min() >= 0 and x.max() <= 1 for x in seen)
    raw = loss(False)
    assert max(float(x.max()) for x in seen) > 4  # the template feeds the overshoot back
    assert clamped != raw


def test_the_clamp_changes_what_later_steps_see_so_their_gradients_too():
    """What README.md says of `feedback_clamp`: no gradient flows through the fed-back frame either way (it is
    detached), but the clamped input changes the later steps' loss and so the gradients."""
    with torch.random.fork_rng():  # leaves the global stream as it was: later tests' models start the same
        frames, poses, eps = _data(4)
        m = CVAE(16, 8, 4, 16)
    with torch.no_grad():
        m.generator[-1].bias.fill_(5.0)  # every prediction overshoots the [0, 1] frame range

    def grads(clamp: bool) -> list[torch.Tensor]:
        m.zero_grad()
        clip_loss(m, frames, poses, 1.0, False, eps, clamp_feedback=clamp).loss.backward()
        return [p.grad.clone() for p in m.frame_enc.parameters()]

    assert any(not torch.equal(a, b) for a, b in zip(grads(True), grads(False), strict=True))


def test_teacher_forcing_changes_the_loss():
    frames, poses, eps = _data(1)
    m = CVAE(16, 8, 4, 16)
    assert clip_loss(m, frames, poses, 1.0, True, eps).loss != clip_loss(m, frames, poses, 1.0, False, eps).loss


def test_rollout_is_clamped_seeded_and_ignores_future_frames():
    frames, poses, _ = _data(2, b=2, length=5)
    m = CVAE(16, 8, 4, 16).eval()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p1 = rollout(m, frames[:, 0], poses, g1, block=2)
    p2 = rollout(m, frames[:, 0], poses, g2, block=64)
    assert p1.shape == (2, 4, 3, 8, 16)
    assert p1.min() >= 0 and p1.max() <= 1
    torch.testing.assert_close(p1, p2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_ffn_halves_equal_the_templates_chunked_conv(channels_last: bool):
    """ConvFFN runs its 1x1 conv as two convs over the weight halves; the template chunks one conv's output.
    Same parameters, same outputs and the same gradients."""
    from model.blocks import ConvFFN

    torch.manual_seed(0)
    ffn = ConvFFN(16)
    x = torch.randn(3, 16, 8, 12)
    if channels_last:
        ffn, x = ffn.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def template(m: ConvFFN, inp: torch.Tensor) -> torch.Tensor:
        a, b = m.conv(inp).chunk(2, dim=1)
        return inp + m.conv_out(a * m.act(b))

    ours = ffn(x)
    ours.square().sum().backward()
    grads = [p.grad.clone() for p in ffn.parameters()] + [x.grad.clone()]
    ffn.zero_grad()
    x.grad = None
    ref = template(ffn, x)
    ref.square().sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [p.grad for p in ffn.parameters()] + [x.grad], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
