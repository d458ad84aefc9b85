"""SFT and reward-model stages (TRL SFTTrainer / RewardTrainer) on a small synthetic task."""

import copy
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")

from rlhfkit.stages.reward import RewardStageConfig, pairwise_accuracy, score_texts, train_reward_model  # noqa: E402
from rlhfkit.stages.sft import (  # noqa: E402
    SFTStageConfig,
    completion_nll,
    encode_prompt_completion,
    split_sft_rows,
    tokenizer_adds_special_tokens,
    train_sft,
)

SMALL = dict(num_sft=300, num_pairs=300, num_eval_pairs=100)
SFT_CONFIG = dict(epochs=5, batch_size=16)
RM_CONFIG = dict(epochs=4, batch_size=16, learning_rate=2e-3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def task():
    from rlhfkit_plugins.datasets.synthetic import SyntheticOptions, build

    return build(SyntheticOptions(**SMALL), seed=0)


@pytest.fixture(scope="module")
def tokenizer(task):
    from rlhfkit.tokenizer import train_tokenizer

    return train_tokenizer(task.tokenizer_corpus(), task.tokenizer_kind, task.tokenizer_vocab_size)


def new_policy(tokenizer, seed=0):
    from rlhfkit.models import build_causal_lm, parse_model_spec

    torch.manual_seed(seed)
    return build_causal_lm(parse_model_spec("llama:tiny"), tokenizer)


def new_reward_model(tokenizer, seed=0):
    from rlhfkit.models import build_sequence_classifier, parse_model_spec

    torch.manual_seed(seed)
    return build_sequence_classifier(parse_model_spec("llama:tiny"), tokenizer)


def assert_reloaded_identical(model, reloaded, run):
    """Same weights, and the same outputs: bit for bit once the reloaded tensors are realigned.

    Weights loaded from safetensors are memory-mapped at offsets that are not 64-byte aligned, which sends a few
    CPU kernels down another SIMD path: outputs then differ in the last float32 bit (~3e-8) only.
    """
    weights, loaded = model.state_dict(), reloaded.state_dict()
    assert weights.keys() == loaded.keys()
    assert all(torch.equal(weights[k], loaded[k]) for k in weights)
    model.eval()
    with torch.no_grad():
        expected, got = run(model), run(reloaded)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        for param in reloaded.parameters():
            param.data = param.data.clone()
        assert torch.equal(run(reloaded), expected)


def without_seconds(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith("/seconds")}


@pytest.fixture(scope="module")
def sft_run(task, tokenizer, tmp_path_factory):
    model = new_policy(tokenizer)
    out = tmp_path_factory.mktemp("sft")
    metrics = train_sft(model, tokenizer, task, SFTStageConfig(**SFT_CONFIG), out)
    return model, out, metrics


@pytest.fixture(scope="module")
def rm_run(task, tokenizer, tmp_path_factory):
    model = new_reward_model(tokenizer)
    out = tmp_path_factory.mktemp("rm")
    metrics = train_reward_model(model, tokenizer, task, RewardStageConfig(**RM_CONFIG), out)
    return model, out, metrics


# --- configs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, bad",
    [
        (SFTStageConfig, dict(epochs=0)),
        (SFTStageConfig, dict(learning_rate=0)),
        (SFTStageConfig, dict(batch_size=0)),
        (SFTStageConfig, dict(max_length=0)),
        (SFTStageConfig, dict(warmup_ratio=1.0)),
        (SFTStageConfig, dict(weight_decay=-1)),
        (SFTStageConfig, dict(lr_scheduler="step")),
        (SFTStageConfig, dict(eval_fraction=1.0)),
        (RewardStageConfig, dict(epochs=0)),
        (RewardStageConfig, dict(learning_rate=-1e-3)),
        (RewardStageConfig, dict(warmup_ratio=-0.1)),
        (RewardStageConfig, dict(lr_scheduler="exp")),
        (RewardStageConfig, dict(center_rewards_coefficient=-0.01)),
    ],
)
def test_config_rejects_bad_values(cls, bad):
    with pytest.raises(ValueError) as info:
        cls(**bad)
    assert "\n" not in str(info.value)
    assert next(iter(bad)) in str(info.value)


def test_stage_modules_import_without_torch():
    code = (
        "import sys, rlhfkit.stages.sft, rlhfkit.stages.reward\n"
        "rlhfkit.stages.sft.SFTStageConfig(); rlhfkit.stages.reward.RewardStageConfig()\n"
        "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'stage modules imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_split_sft_rows_holds_out_the_tail():
    rows = [{"i": i} for i in range(100)]
    train, held = split_sft_rows(rows, 0.05)
    assert [r["i"] for r in held] == [95, 96, 97, 98, 99] and len(train) == 95
    assert split_sft_rows(rows, 0.0) == (rows, [])
    assert split_sft_rows(rows[:2], 0.001) == (rows[:1], rows[1:2])


# --- SFT -----------------------------------------------------------------------------------------------


def test_sft_lowers_held_out_completion_loss(sft_run, task, tokenizer):
    model, _, metrics = sft_run
    assert set(metrics) >= {"sft/train_loss", "sft/eval_loss", "sft/seconds"}
    assert metrics["sft/eval_examples"] == 15 and metrics["sft/train_examples"] == 285
    # The untrained model is near uniform over the vocabulary (ln 85 = 4.44); trained, clearly lower.
    assert metrics["sft/eval_loss_init"] > 4.2
    assert metrics["sft/eval_loss"] < metrics["sft/eval_loss_init"] - 0.3
    _, held = split_sft_rows(task.sft, SFTStageConfig().eval_fraction)
    untrained = completion_nll(new_policy(tokenizer), tokenizer, held)
    assert untrained == pytest.approx(metrics["sft/eval_loss_init"], rel=1e-6)
    assert completion_nll(model, tokenizer, held) == pytest.approx(metrics["sft/eval_loss"], rel=1e-6)


def test_sft_removes_trl_forward_patch(sft_run, tokenizer):
    model, _, _ = sft_run
    assert "forward" not in model.__dict__  # TRL's fused LM head is bound to this instance; a deepcopy would share it
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.zero_()
    ids = torch.tensor([[5, 6, 7]])
    assert not torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_sft_completion_mask_starts_after_prompt(tokenizer, task):
    row = task.sft[0]
    ids, start = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
    assert ids[:start] == tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in ids[:-1]
    assert tokenizer.decode(ids[start:-1]).split() == row["completion"].split()


def test_sft_policy_samples_eos_terminated_lexicon_completions(sft_run, task, tokenizer):
    from rlhfkit_plugins.datasets.synthetic import FILLER, NEGATIVE, POSITIVE

    model, _, _ = sft_run
    lexicon = set(POSITIVE) | set(NEGATIVE) | set(FILLER)
    prompts = task.eval_prompts[:16] * 2
    query = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(
        **query, do_sample=True, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    ended, lengths, in_lexicon, words_total = 0, [], 0, 0
    for row in out[:, query.input_ids.size(1):].tolist():
        if tokenizer.eos_token_id in row:
            ended += 1
            row = row[: row.index(tokenizer.eos_token_id)]
        words = tokenizer.decode(row).split()
        lengths.append(len(words))
        in_lexicon += sum(w in lexicon for w in words)
        words_total += len(words)
    assert ended / len(prompts) >= 0.9
    assert sum(3 <= n <= 11 for n in lengths) / len(lengths) >= 0.8
    assert in_lexicon / max(words_total, 1) >= 0.9


def test_sft_saved_dir_reloads_identically(sft_run, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, out, _ = sft_run
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    batch = tok(["write a short note about the river : good", "the"], return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id
    assert batch.input_ids.tolist() == tokenizer(
        ["write a short note about the river : good", "the"], return_tensors="pt", padding=True
    ).input_ids.tolist()
    assert_reloaded_identical(model, reloaded, lambda m: m(**batch).logits)


# --- reward model --------------------------------------------------------------------------------------


def test_reward_model_beats_chance(rm_run, task, tokenizer):
    model, _, metrics = rm_run
    assert set(metrics) >= {
        "reward/eval_accuracy", "reward/train_loss", "reward/seconds", "reward/score_mean", "reward/score_std",
    }
    assert metrics["reward/eval_accuracy"] >= 0.7, metrics
    assert metrics["reward/dropped_pairs"] == 0
    assert metrics["reward/train_loss"] < 0.69
    assert pairwise_accuracy(model, tokenizer, task.eval_pairs) == metrics["reward/eval_accuracy"]
    assert metrics["reward/score_std"] > 0


def test_score_texts_matches_hf_classifier_on_right_padding(rm_run, task, tokenizer):
    model, _, _ = rm_run
    pairs = task.eval_pairs[:12]
    prompts = [p["prompt"] for p in pairs]
    answers = [p["chosen"] if i % 2 else p["rejected"] for i, p in enumerate(pairs)]
    ours = score_texts(model, tokenizer, prompts, answers, batch_size=5)
    assert ours.shape == (len(pairs),) and ours.dtype == torch.float32
    texts = [p + a + tokenizer.eos_token for p, a in zip(prompts, answers)]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(x) for x in ids}) > 1  # padding actually happens
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    with torch.no_grad():
        hf = model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        alone = torch.cat([model(input_ids=torch.tensor([row])).logits.squeeze(-1) for row in ids])
    torch.testing.assert_close(ours, hf, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, alone, rtol=1e-4, atol=1e-5)
    # A completion that already ends with EOS gets no second one.
    again = score_texts(model, tokenizer, prompts[:3], [a + tokenizer.eos_token for a in answers[:3]])
    torch.testing.assert_close(again, ours[:3], rtol=1e-4, atol=1e-5)


def test_reward_saved_dir_reloads_identically(rm_run, tokenizer):
    from transformers import AutoModelForSequenceClassification

    model, out, _ = rm_run
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert reloaded.config.num_labels == 1 and reloaded.config.pad_token_id == tokenizer.pad_token_id
    prompts = ["write a long note about the city :", "write a plain note about the market :"]
    answers = [" good kind warm the", " bad"]
    assert_reloaded_identical(model, reloaded, lambda m: score_texts(m, tokenizer, prompts, answers))
    texts = [p + a + tokenizer.eos_token for p, a in zip(prompts, answers)]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert_reloaded_identical(model, reloaded, lambda m: m(**batch).logits)


# --- determinism ---------------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics_and_weights(task, tokenizer, tmp_path):
    import dataclasses

    task = dataclasses.replace(task, sft=task.sft[:128], pairs=task.pairs[:128], eval_pairs=task.eval_pairs[:32])
    sft_config = SFTStageConfig(epochs=1, batch_size=32, seed=3)
    rm_config = RewardStageConfig(epochs=1, batch_size=32, seed=3)
    runs = []
    for i in range(2):
        policy, rm = new_policy(tokenizer, seed=1), new_reward_model(tokenizer, seed=1)
        sft = train_sft(policy, tokenizer, task, sft_config, tmp_path / f"sft{i}")
        reward = train_reward_model(rm, tokenizer, task, rm_config, tmp_path / f"rm{i}")
        runs.append((without_seconds(sft), without_seconds(reward), policy.state_dict(), rm.state_dict()))
    (sft_a, rm_a, policy_a, reward_a), (sft_b, rm_b, policy_b, reward_b) = runs
    assert sft_a == sft_b and rm_a == rm_b
    assert all(torch.equal(policy_a[k], policy_b[k]) for k in policy_a)
    assert all(torch.equal(reward_a[k], reward_b[k]) for k in reward_a)
    # ...and another seed changes the data order, hence the result.
    other = train_sft(new_policy(tokenizer, seed=1), tokenizer, task, SFTStageConfig(epochs=1, batch_size=32, seed=4),
                      tmp_path / "sft-other")
    assert without_seconds(other) != sft_a


# --- tokenizers that add special tokens ----------------------------------------------------------------


def test_stages_pretokenize_when_the_tokenizer_adds_bos(task, tokenizer, tmp_path):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    bos_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="left",
    )
    assert bos_tok("good")["input_ids"][0] == bos_tok.bos_token_id
    assert tokenizer_adds_special_tokens(bos_tok) and not tokenizer_adds_special_tokens(tokenizer)

    policy = new_policy(bos_tok)
    metrics = train_sft(policy, bos_tok, task, SFTStageConfig(epochs=1, batch_size=32), tmp_path / "sft")
    assert metrics["sft/eval_loss"] < metrics["sft/eval_loss_init"] - 0.2
    rm = new_reward_model(bos_tok)
    metrics = train_reward_model(rm, bos_tok, task, RewardStageConfig(epochs=1, batch_size=32), tmp_path / "rm")
    assert metrics["reward/dropped_pairs"] == 0 and metrics["reward/train_loss"] < 0.7


def test_score_texts_caps_long_texts_at_max_length_keeping_eos(rm_run, task, tokenizer):
    from rlhfkit.stages.sft import CHARS_PER_TOKEN

    model, _, _ = rm_run
    prompt, short = task.eval_pairs[0]["prompt"], task.eval_pairs[0]["chosen"]
    long_answer = short + " ".join(["good"] * 5000)  # far past max_length tokens and 64 x max_length chars
    max_length = 16
    assert len(prompt + long_answer) > CHARS_PER_TOKEN * max_length
    scores = score_texts(model, tokenizer, [prompt, prompt], [short, long_answer], max_length=max_length)
    ids = tokenizer(prompt + long_answer, add_special_tokens=False)["input_ids"][: max_length - 1]
    expected = model(input_ids=torch.tensor([ids + [tokenizer.eos_token_id]])).logits.squeeze(-1)
    torch.testing.assert_close(scores[1:], expected.detach(), rtol=1e-4, atol=1e-5)
    # a row within max_length is scored as without the cap
    assert len(tokenizer(prompt + short + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) <= 128
    torch.testing.assert_close(
        score_texts(model, tokenizer, [prompt], [short], max_length=128), score_texts(model, tokenizer, [prompt], [short])
    )


def test_sft_encoding_is_capped_in_characters_and_tokens(tokenizer):
    from rlhfkit.stages.sft import CHARS_PER_TOKEN, cap_chars

    prompt = "word " * 10_000
    capped_prompt, answer, cut = cap_chars(prompt, " answer", 8)
    assert cut and len(capped_prompt) == CHARS_PER_TOKEN * 8 and answer == ""
    assert cap_chars("p", " a", 8) == ("p", " a", False)
    ids, start = encode_prompt_completion(tokenizer, prompt, " answer", max_length=8)
    assert len(ids) == 8 and start == 8  # the prompt fills the window: no completion tokens, no bad mask
