"""``[rl] adamw_kernel``: which torch AdamW kernel a trained model gets, and the gradient clip that skips its
no-op multiply (bit for bit torch's ``clip_grad_norm_``)."""

from types import SimpleNamespace

import pytest
import torch

from rlhfkit.cellspec.build import _optimizer
from rlhfkit.cellspec.modelset import FUSED_ADAMW_MIN_TRAINABLE, OptimizerChoice, adamw_fused
from rlhfkit.engine.config import RLConfig
from rlhfkit.engine.context import _clip_grad_norm


@pytest.mark.parametrize("kernel, trainable, cuda, zero, fused", [
    ("auto", FUSED_ADAMW_MIN_TRAINABLE - 1, False, 0, False),  # tiny presets keep foreach (and their numbers)
    ("auto", FUSED_ADAMW_MIN_TRAINABLE, False, 0, True),
    ("auto", 1000, True, 0, True),  # CUDA: fused at every size
    ("auto", 10**9, True, 2, False),  # ZeRO wraps the optimizer: auto keeps foreach
    ("fused", 10, False, 0, True),
    ("foreach", 10**9, True, 0, False),
])
def test_the_kernel_rule(kernel, trainable, cuda, zero, fused):
    assert adamw_fused(kernel, trainable, cuda, zero) is fused


def _kind(optimizer) -> str:
    d = optimizer.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "loop"


def test_the_cell_builds_the_kernel_the_rule_picks():
    small = torch.nn.Linear(10, 10)
    big = torch.nn.Linear(1500, 1500)  # 2,251,500 trainable parameters
    frozen_big = torch.nn.Sequential(torch.nn.Linear(1500, 1500), torch.nn.Linear(10, 10))
    frozen_big[0].requires_grad_(False)  # trainable parameters count, not stored ones
    auto, fused, foreach = (RLConfig(adamw_kernel=k) for k in ("auto", "fused", "foreach"))
    assert _kind(_optimizer(small, auto, 1e-3, 10)[0]) == "foreach"
    assert _kind(_optimizer(big, auto, 1e-3, 10)[0]) == "fused"
    assert _kind(_optimizer(frozen_big, auto, 1e-3, 10)[0]) == "foreach"
    assert _kind(_optimizer(big, auto, 1e-3, 10, zero_stage=2)[0]) == "foreach"
    assert _kind(_optimizer(small, fused, 1e-3, 10)[0]) == "fused"
    assert _kind(_optimizer(big, foreach, 1e-3, 10)[0]) == "foreach"


def test_a_strategy_optimizer_is_not_touched_by_the_kernel():
    made = {}

    def factory(params, **kw):
        made.update(kw)
        return torch.optim.SGD(params, lr=kw["lr"])

    opt, _ = _optimizer(torch.nn.Linear(1500, 1500), RLConfig(adamw_kernel="fused"), 1e-3, 10,
                        OptimizerChoice(name="sgd", factory=factory))
    assert isinstance(opt, torch.optim.SGD) and "fused" not in made


def test_fused_and_foreach_are_the_same_update_to_rounding():
    torch.manual_seed(0)
    a = torch.nn.Linear(64, 64)
    b = torch.nn.Linear(64, 64)
    b.load_state_dict(a.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, eps=1e-5, weight_decay=0.1, **{k: True})
            for m, k in ((a, "foreach"), (b, "fused"))]
    for _ in range(5):
        grad = torch.randn(64, 64)
        for m, opt in zip((a, b), opts):
            m.weight.grad, m.bias.grad = grad.clone(), grad[0].clone()
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6, rtol=0)


def _grads(scale: float):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 3))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_norm_clips_as_torch_does(bad):
    ours, theirs = _grads(1.0), _grads(1.0)
    for model in (ours, theirs):
        model[1].bias.grad[0] = bad
    norm = _clip_grad_norm(SimpleNamespace(scaler=None), ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    assert torch.equal(norm, want) or (norm.isnan() and want.isnan())
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p.grad.isfinite(), q.grad.isfinite())  # NaN: every gradient NaN, as torch leaves them
        assert torch.equal(p.grad[p.grad.isfinite()], q.grad[q.grad.isfinite()])


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_the_clip_equals_torchs_bit_for_bit(scale):
    ours, theirs = _grads(scale), _grads(scale)
    hand = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ours.parameters())).item()
    norm = _clip_grad_norm(SimpleNamespace(scaler=None), ours, 1.0)
    want = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    assert norm.item() == pytest.approx(hand, rel=1e-6)
    assert torch.equal(norm, want)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p.grad, q.grad)
    clipped = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ours.parameters())).item()
    assert clipped == pytest.approx(min(hand, 1.0), rel=1e-5)


def test_every_shipped_recipe_keeps_its_cpu_numbers():
    """Both "auto" rules that change rounding (fused AdamW, a shared prompt prefill) stay off on the CPU for every
    recipe in recipes/ built from presets: their pinned and published numbers are those of earlier versions.
    (seed_table.toml's real 6.7B checkpoint is a GPU recipe: fused there, as TRL is.)"""
    from pathlib import Path

    from rlhfkit.cellspec.arch import cell_architecture
    from rlhfkit.engine.rollout import COMPUTE_BOUND_FLOPS_PER_TOKEN
    from rlhfkit.models import parse_model_spec
    from rlhfkit.recipe import load_recipe

    checked = 0
    for path in sorted(Path(__file__).resolve().parents[1].glob("recipes/*.toml")):
        recipe = load_recipe(path)
        for name, entry in recipe.models.items():
            for which in ("policy", "reward"):
                ref = getattr(entry, which)
                if not ref or ref.startswith("fn:") or not parse_model_spec(ref).is_preset:
                    continue  # a reward function, a checkpoint or a known checkpoint's numbers
                n = cell_architecture(recipe, name, which)["num_parameters"]  # >= trainable, >= non-embedding
                assert not adamw_fused("auto", n, cuda=False), (path.name, name, which, n)
                assert 2 * n < COMPUTE_BOUND_FLOPS_PER_TOKEN, (path.name, name, which, n)
                checked += 1
    assert checked >= 10
