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
