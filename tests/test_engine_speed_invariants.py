"""Speed changes must not change results: values pinned from the engine BEFORE any speed work (issue 6).

A tiny random Llama policy and reward model, fixed seeds.  ``sample()`` must draw the same tokens with the
same log-probs and leave the generator in the same state (same number of Gumbel draws);
``response_logprobs`` (with entropy) and ``token_scores`` must give the same values.  Tokens are compared
exactly; floats to 1e-5 (reduction order inside a kernel may move the last bits, nothing more).
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhfkit.engine.core import selective_log_softmax, truncate_after_eos
from rlhfkit.engine.rollout import response_logprobs, sample, token_scores

PAD, EOS = 0, 2
ATOL = 1e-5

PINNED = {"t1": {"tokens": [[23, 45, 6, 28, 41, 40, 5, 38, 6, 44], [46, 32, 14, 27, 31, 31, 1, 20, 46, 42], [22, 13, 40, 22, 17, 32, 7, 22, 2, 0], [11, 0, 17, 29, 13, 37, 48, 6, 3, 49]], "logprobs": [[-3.8810644149780273, -3.982051372528076, -3.87858247756958, -4.034798622131348, -3.87939190864563, -3.916907548904419, -3.8629608154296875, -3.908517837524414, -3.931241035461426, -3.7878522872924805], [-3.9206676483154297, -3.8735885620117188, -3.926764488220215, -3.9958579540252686, -3.8628904819488525, -3.7844579219818115, -3.7167563438415527, -4.025820732116699, -3.9388551712036133, -4.023425102233887], [-4.00904655456543, -3.9039266109466553, -3.940713882446289, -3.8114986419677734, -3.9001662731170654, -3.932889699935913, -3.6661834716796875, -3.6381821632385254, -3.9327802658081055, -3.704770565032959], [-3.9917640686035156, -3.848655939102173, -3.917881965637207, -3.753593683242798, -3.9465229511260986, -3.803126096725464, -3.865541458129883, -3.8481009006500244, -4.013622283935547, -3.8649604320526123]], "after": [0.9649760127067566, 0.5881645083427429, 0.7301462292671204]}, "t07_topk5": {"tokens": [[48, 22, 38, 37, 2, 0, 0, 0, 0, 0], [47, 9, 0, 18, 5, 46, 8, 5, 46, 8], [19, 22, 12, 14, 24, 7, 22, 29, 2, 0], [46, 39, 5, 9, 31, 11, 32, 7, 5, 9]], "logprobs": [[-3.683515787124634, -3.6802127361297607, -3.5937211513519287, -3.646890640258789, -3.6615915298461914, -3.6975440979003906, -3.701354742050171, -3.5167899131774902, -3.7014310359954834, -3.702261209487915], [-3.588409900665283, -3.6898579597473145, -3.641826629638672, -3.5401008129119873, -3.692225694656372, -3.727255344390869, -3.6440863609313965, -3.6361656188964844, -3.7179641723632812, -3.64577317237854], [-3.689805507659912, -3.6570210456848145, -3.5268356800079346, -3.7287349700927734, -3.6514384746551514, -3.560731887817383, -3.622019052505493, -3.6877520084381104, -3.6885390281677246, -3.6714932918548584], [-3.737661123275757, -3.652359962463379, -3.6464552879333496, -3.680840253829956, -3.692434072494507, -3.545020341873169, -3.6173033714294434, -3.6300411224365234, -3.756296157836914, -3.684706449508667]], "after": [0.9649760127067566, 0.5881645083427429, 0.7301462292671204]}, "response_logprobs": [[-3.8810646533966064, -3.982051372528076, -3.878582715988159, -4.034798622131348, -3.879391670227051, -3.916907548904419, -3.8629608154296875, -3.908517837524414, -3.931241035461426, -3.7878520488739014], [-3.9206676483154297, -3.873588800430298, -3.9267642498016357, -3.9958579540252686, -3.8628904819488525, -3.7844579219818115, -3.7167561054229736, -4.025820732116699, -3.9388551712036133, -4.023425102233887], [-4.00904655456543, -3.9039266109466553, -3.94071364402771, -3.8114986419677734, -3.9001662731170654, -3.932889938354492, -3.6661834716796875, -3.6381821632385254, -3.9327802658081055, -3.871880292892456], [-3.9917640686035156, -3.848655939102173, -3.917881727218628, -3.753593683242798, -3.9465227127075195, -3.803126096725464, -3.865541458129883, -3.848100423812866, -4.013622283935547, -3.8649604320526123]], "entropy": [[3.9063541889190674, 3.9042062759399414, 3.905578136444092, 3.904837131500244, 3.906536102294922, 3.9064767360687256, 3.9048962593078613, 3.906345844268799, 3.9080452919006348, 3.905226945877075], [3.905893087387085, 3.90582275390625, 3.9061617851257324, 3.9039013385772705, 3.9057576656341553, 3.904207944869995, 3.904179334640503, 3.9049148559570312, 3.903903007507324, 3.9054081439971924], [3.9057672023773193, 3.9075913429260254, 3.9064412117004395, 3.905696392059326, 3.9071688652038574, 3.906167984008789, 3.905910015106201, 3.90702223777771, 3.906312942504883, 3.903902769088745], [3.908160924911499, 3.9052364826202393, 3.9078989028930664, 3.9070816040039062, 3.904423952102661, 3.9059512615203857, 3.9066755771636963, 3.9057602882385254, 3.905489683151245, 3.9073705673217773]], "token_scores": [[0.0, 0.0, -0.130135178565979, 0.07652336359024048, -0.03778613358736038, 0.07026966661214828, -0.004474293440580368, 0.08732708543539047, -0.03905216231942177, 0.07542736828327179, 0.26974377036094666, -0.16871516406536102, -0.10169976949691772, 0.10403846204280853, -0.031907908618450165], [-0.04889489337801933, -0.0003578886389732361, -0.027474502101540565, -0.11387950927019119, -0.021661575883626938, -0.04169684648513794, 0.01238599419593811, -0.12181366980075836, -0.10421325266361237, -0.055696144700050354, -0.05786033719778061, -0.21381522715091705, -0.2127886414527893, -0.047220513224601746, -0.1501404345035553], [0.0, -0.025237344205379486, -0.1404387354850769, -0.05951285734772682, 0.07713507115840912, -0.05437610298395157, -0.0024642646312713623, 0.21565483510494232, -0.016012072563171387, 0.1063288226723671, 0.09129881858825684, -0.06020437180995941, -0.008853405714035034, -0.046869199723005295, 0.12835383415222168], [0.0, 0.0, 0.0, 0.051656097173690796, 0.008048921823501587, -0.06109059602022171, 0.036130767315626144, 0.08011043071746826, -0.08105131983757019, 0.014714587479829788, -0.03789065405726433, -0.017731964588165283, 0.09035259485244751, 0.053693268448114395, -0.15927505493164062]]}


def _config():
    return LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=1,
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    policy = LlamaForCausalLM(_config()).eval()
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(LlamaConfig(**{**_config().to_dict(), "num_labels": 1})).eval()
    return policy, reward


def _queries():
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12], [PAD, 13, 14, 15, 16], [PAD, PAD, PAD, 3, 4]])
    return ids, (ids != PAD).long()


@pytest.mark.parametrize("name,kwargs", [("t1", {"temperature": 1.0}), ("t07_topk5", {"temperature": 0.7, "top_k": 5})])
def test_sample_is_unchanged(models, name, kwargs):
    policy, _ = models
    ids, mask = _queries()
    gen = torch.Generator().manual_seed(123)
    tokens, logprobs = sample(policy, ids, mask, 10, eos_token_id=EOS, pad_token_id=PAD, generator=gen, **kwargs)
    want = PINNED[name]
    assert tokens.tolist() == want["tokens"]
    assert torch.allclose(logprobs, torch.tensor(want["logprobs"]), atol=ATOL, rtol=0)
    # Same number of random draws: the generator continues from the same state.
    assert torch.allclose(torch.rand(3, generator=gen), torch.tensor(want["after"]), atol=0, rtol=0)


def test_sample_under_inference_mode_is_unchanged(models):
    policy, _ = models
    ids, mask = _queries()
    with torch.inference_mode():
        tokens, logprobs = sample(policy, ids, mask, 10, 1.0, EOS, PAD, torch.Generator().manual_seed(123))
    assert tokens.tolist() == PINNED["t1"]["tokens"]
    assert torch.allclose(logprobs, torch.tensor(PINNED["t1"]["logprobs"]), atol=ATOL, rtol=0)


def _full_batch():
    ids, mask = _queries()
    responses, rmask, _, _ = truncate_after_eos(torch.tensor(PINNED["t1"]["tokens"]), EOS, PAD)
    return torch.cat([ids, responses], 1), torch.cat([mask, rmask.long()], 1), responses


def test_response_logprobs_and_entropy_are_unchanged(models):
    policy, _ = models
    full, full_mask, responses = _full_batch()
    with torch.no_grad():
        logprobs, entropy = response_logprobs(policy, full, full_mask, responses, 1.0, with_entropy=True)
        plain = response_logprobs(policy, full, full_mask, responses, 1.0)
    assert torch.allclose(logprobs, torch.tensor(PINNED["response_logprobs"]), atol=ATOL, rtol=0)
    assert torch.allclose(plain, logprobs, atol=ATOL, rtol=0)
    assert torch.allclose(entropy, torch.tensor(PINNED["entropy"]), atol=ATOL, rtol=0)


def test_response_logprobs_gradient_still_flows(models):
    policy, _ = models
    full, full_mask, responses = _full_batch()
    logprobs = response_logprobs(policy, full, full_mask, responses, 1.0)
    logprobs.sum().backward()
    grad = policy.model.embed_tokens.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


def test_token_scores_are_unchanged(models):
    _, reward = models
    full, full_mask, _ = _full_batch()
    with torch.no_grad():
        scores = token_scores(reward, full, full_mask)
    assert torch.allclose(scores, torch.tensor(PINNED["token_scores"]), atol=ATOL, rtol=0)


def test_selective_log_softmax_matches_log_softmax():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(19, 6, 50, generator=gen)
    tokens = torch.randint(0, 50, (19, 6), generator=gen)
    want = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(selective_log_softmax(logits, tokens), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 5)])
def test_fast_llama_decoder_equals_the_models_own_forward(models, padded, temperature, top_k):
    """The lean Llama decode step gives the same tokens and log-probs as decoding with ``model(...)``."""
    from transformers import DynamicCache

    from rlhfkit_plugins.models._decode import LlamaDecoder as _LlamaDecoder

    policy, _ = models
    ids, mask = _queries()
    if not padded:
        ids, mask = ids[1:2].repeat(3, 1), mask[1:2].repeat(3, 1)
    with torch.no_grad():
        cache = DynamicCache()
        policy(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    assert _LlamaDecoder.supports(policy, cache)
    runs = []
    for fast in (True, False):
        gen = torch.Generator().manual_seed(11)
        runs.append(sample(policy, ids, mask, 24, temperature, EOS, PAD, gen, top_k=top_k, fast=fast))
    assert runs[0][0].tolist() == runs[1][0].tolist()
    assert torch.allclose(runs[0][1], runs[1][1], atol=ATOL, rtol=0)


def test_plain_and_module_decode_paths_agree(models, monkeypatch):
    """The functional decode step (stock modules) and the module-calling one (LoRA, hooks) give the same numbers."""
    from rlhfkit_plugins.models._decode import LlamaDecoder as _LlamaDecoder

    policy, _ = models
    ids, mask = _queries()
    assert _LlamaDecoder._plain_weights(policy) is not None
    plain = sample(policy, ids, mask, 16, 1.0, EOS, PAD, torch.Generator().manual_seed(5))
    monkeypatch.setattr(_LlamaDecoder, "_plain_weights", staticmethod(lambda base: None))
    modules = sample(policy, ids, mask, 16, 1.0, EOS, PAD, torch.Generator().manual_seed(5))
    assert plain[0].tolist() == modules[0].tolist()
    assert torch.allclose(plain[1], modules[1], atol=ATOL, rtol=0)


def test_decoder_falls_back_to_modules_under_a_forward_hook(models):
    from rlhfkit_plugins.models._decode import LlamaDecoder as _LlamaDecoder

    policy, _ = models
    handle = policy.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        assert _LlamaDecoder._plain_weights(policy) is None
    finally:
        handle.remove()
