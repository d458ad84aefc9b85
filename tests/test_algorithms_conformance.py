"""rlhfkit.testing.check_algorithm: every built-in passes; broken trainers fail with the right one-line reason."""

import pytest
import torch

from rlhfkit import plugins
from rlhfkit.engine.config import RLConfig
from rlhfkit.hookspecs import hookimpl
from rlhfkit.registry import AlgorithmSpec
from rlhfkit.testing import check_algorithm

BUILTINS = ("ppo", "rloo", "grpo", "reinforce_pp", "remax", "online_dpo", "dpo")


@pytest.mark.parametrize("algorithm", BUILTINS)
def test_every_builtin_algorithm_conforms(algorithm):
    report = check_algorithm(algorithm)
    assert len(report.metrics) == 2 and report.ledger["ledger/episodes"] > 0
    assert "training" in report.phases and len(report.checks) == 8


def _loss(ctx, rollout):
    logits = ctx.policy(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits
    return -torch.log_softmax(logits, -1).mean()


def train_steps_the_scheduler_per_minibatch(ctx):
    from rlhfkit.engine.steps import Phase

    for step in ctx.steps():
        rollout = ctx.rollout(ctx.prompt_sampler.next(4, repeats=2))
        with ctx.phase(Phase.TRAINING):
            for _ in range(2):
                step.stat("loss/policy", ctx.optimizer_step(_loss(ctx, rollout), ctx.policy))
                ctx.policy_scheduler.step()  # the bug: the step scope already steps it once per step
        step.record_rollout(rollout)


def train_with_a_nan_loss(ctx):
    from rlhfkit.engine.steps import Phase

    for step in ctx.steps():
        rollout = ctx.rollout(ctx.prompt_sampler.next(4, repeats=2))
        with ctx.phase(Phase.TRAINING):
            loss = _loss(ctx, rollout) * float("nan")
            ctx.optimizer_step(loss, ctx.policy)  # not checked, not logged: the weights become NaN
        step.record_rollout(rollout)


def train_without_episodes(ctx):
    from rlhfkit.engine.steps import Phase

    for step in ctx.steps():
        rollout = ctx.rollout(ctx.prompt_sampler.next(4, repeats=2))
        ctx.ledger.episodes -= rollout.responses.size(0)  # the bug: its episodes never reach the books
        with ctx.phase(Phase.TRAINING):
            step.stat("loss/policy", 0.0)
            ctx.optimizer_step(_loss(ctx, rollout), ctx.policy)


class Broken:
    @hookimpl
    def register_algorithms(self, register):
        for name, trainer in (("sched", train_steps_the_scheduler_per_minibatch), ("nan", train_with_a_nan_loss),
                              ("noeps", train_without_episodes)):
            register(AlgorithmSpec(name=f"broken-{name}", config_class=RLConfig, trainer=trainer))


@pytest.fixture
def broken():
    plugin = Broken()
    plugins.register_plugin(plugin, name="broken")
    yield
    plugins.unregister_plugin(plugin)


@pytest.mark.parametrize("name,reason", [
    ("broken-sched", "every LR scheduler must step once per step (2), stepped {'LambdaLR': 6}"),
    ("broken-nan", "the policy's parameters are not finite after training"),
    ("broken-nan", "every step must log at least one loss/* statistic"),
    ("broken-noeps", "spent none of the episodes budget"),
])
def test_a_broken_trainer_fails_with_its_reason(broken, name, reason):
    with pytest.raises(AssertionError) as err:
        check_algorithm(name)
    assert reason in str(err.value)
    assert all(line.startswith(f"{name}: ") for line in str(err.value).splitlines())


def test_episodes_not_recorded_are_named_under_an_updates_budget(broken):
    with pytest.raises(AssertionError, match="ledger episodes must grow every step, got \\[0, 0\\]"):
        check_algorithm("broken-noeps", budget="updates")


def _example_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("rlhfkit-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _example_installed(), reason="pip install -e examples/rlhfkit-example-plugin")
def test_the_example_plugins_algorithm_conforms():
    registry = plugins.get_registry()
    assert registry.entries["algorithm"]["group_reinforce"].distribution == "rlhfkit-example-plugin"
    assert registry.entries["advantage_estimator"]["group_mean"].plugin == "example"
    report = check_algorithm("group_reinforce")
    assert len(report.metrics) == 2 and "loss/policy" in report.metrics[-1]


def test_group_mean_baseline_by_hand():
    pytest.importorskip("rlhfkit_example_plugin")
    from rlhfkit_example_plugin.group_reinforce import group_mean_advantages

    # group (1, 2, 6): mean 3 -> (-2, -1, 3); group (0, 0, 3): mean 1 -> (-1, -1, 2)
    advantages, returns = group_mean_advantages(seq_rewards=torch.tensor([1.0, 2, 6, 0, 0, 3]), k=3)
    assert advantages.tolist() == [-2.0, -1.0, 3.0, -1.0, -1.0, 2.0] and returns is None
