"""The text families' own maths: the KV cache, the causal mask, the exact likelihood, the sampling rule, and the
torch/numpy loop twins (the family's ``sample`` and serving/sampler_tokens.py give the same tokens)."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contracts.samplers import SamplerSpec, SamplerSpecError
from contracts.token_sampling import EOS, PAD, draw_tokens, filtered_weights
from genmodels import build_model
from tests.text_helpers import names_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"gpt": dict(layers=2, heads=2, embed=16, dropout=0.0, warmup_steps=1),
        "lstm": dict(layers=2, hidden=16, embed=8, dropout=0.0),
        "bigram": dict(alpha=0.5)}


def _trained(family: str, steps: int = 3):
    spec, x, y = names_tokens()
    model = build_model(family, {"data": spec, "seed": 0, **TINY[family]})
    for _ in range(steps):
        model.fit_step(torch.from_numpy(x), torch.from_numpy(y))
    return model.eval(), torch.from_numpy(x), torch.from_numpy(y)


# --- the transformer ------------------------------------------------------------------------------
def test_gpt_kv_cache_decode_equals_full_recompute():
    model, x, y = _trained("gpt")
    T = model.length
    full = model.run(x[:5, :8], y[:5])                                   # 5 x 8 x V
    logits, *cache = model.prefill_module()(x[:5, :3], y[:5])            # prefill 3 positions
    assert torch.allclose(logits, full[:, :3], atol=1e-5) and len(cache) == 2 * 2   # a key and a value per layer
    assert all(c.shape == (5, 2, T, 8) and not c[:, :, 3:].any() for c in cache)     # N x heads x T x head_dim
    buffers = [c.data_ptr() for c in cache]
    for t in range(3, 8):                                                # then one token at a time, in place
        step, *cache = model.decode_module()(x[:5, t:t + 1], torch.tensor(t), *cache)
        assert [c.data_ptr() for c in cache] == buffers                   # the same buffers, written at t
        assert all(c[:, :, t].any() and not c[:, :, t + 1:].any() for c in cache)
        assert torch.allclose(step, full[:, t], atol=1e-5), t
    # the exported graph's semantics: new caches, zero after the position (ORT's GroupQueryAttention unbound)
    junk = [torch.randn_like(c) for c in cache]
    step, *copied = model.decode_module(export=True)(x[:5, 7:8], torch.tensor(7), *junk)
    assert all(c.data_ptr() not in buffers and not c[:, :, 8:].any() for c in copied)
    assert all(torch.equal(c[:, :, :7], j[:, :, :7]) for c, j in zip(copied, junk))


def test_gpt_is_causal_and_sees_its_class_token():
    model, x, y = _trained("gpt")
    a = x[:4, :9].clone()
    b = a.clone()
    b[:, 6:] = 5                                                          # change the future only
    la, lb = model.run(a, y[:4]), model.run(b, y[:4])
    assert torch.allclose(la[:, :6], lb[:, :6], atol=1e-6)
    assert not torch.allclose(la[:, 6:], lb[:, 6:])
    other = model.run(a, (y[:4] + 1) % 3)                                 # the class token reaches every position
    assert not torch.allclose(la[:, 3], other[:, 3])


def test_lstm_decode_steps_equal_the_sequence_pass_and_labels_set_the_state():
    model, x, y = _trained("lstm")
    full = model.logits(x[:5, :8], y[:5])
    logits, h, c = model.prefill_module()(x[:5, :1], y[:5])
    for t in range(1, 8):
        step, h, c = model.decode_module()(x[:5, t:t + 1], h, c)
        assert torch.allclose(step, full[:, t], atol=1e-5)
    assert not torch.allclose(model.logits(x[:5, :3], (y[:5] + 1) % 3), full[:, :3])


# --- the likelihood -------------------------------------------------------------------------------
def test_bigram_nll_and_score_by_hand():
    """Two sequences of one class, counted once: p(b|a) = (n(a,b) + alpha) / (n(a) + alpha (V - 2))."""
    from contracts.data import DataSpec
    from contracts.modalities.tokens import build_vocab, tokenizer

    vocab = build_vocab(["ab", "b"])                                       # ids: a=3, b=4; V = 3 + 2 + 256
    spec = DataSpec(modality="tokens", shape=(4,), dtype="int32", value_range=(0, len(vocab) - 1), num_classes=0,
                    vocab=vocab)
    x = torch.from_numpy(tokenizer(vocab).encode_batch(["ab", "b"], 4)).long()   # [1 3 4 2], [1 4 2 0]
    model = build_model("bigram", {"data": spec, "alpha": 0.5})
    model.fit_step(x, torch.full((2,), -1))
    v2 = len(vocab) - 2
    p = lambda n_ab, n_a: (n_ab + 0.5) / (n_a + 0.5 * v2)  # noqa: E731
    # counts: bos->a 1, bos->b 1, a->b 1, b->eos 2
    first = -(math.log(p(1, 2)) + math.log(p(1, 1)) + math.log(p(2, 2)))
    second = -(math.log(p(1, 2)) + math.log(p(2, 2)))
    score = model.score(x)
    assert score.tolist() == pytest.approx([first, second], rel=1e-6)
    assert model.nll(x).tolist() == pytest.approx([first / 3, second / 2], rel=1e-6)
    assert model.bits_per_char(x) == pytest.approx((first + second) / (5 * math.log(2)), rel=1e-6)
    probs = model.table()[0].double().exp().sum(-1)                       # each row a distribution over V - 2 ids
    assert torch.allclose(probs, torch.ones_like(probs))


@pytest.mark.parametrize("family", ["gpt", "lstm", "bigram"])
def test_nll_is_exact_marginal_without_labels(family):
    """score(x) = -log sum_y p(y) p(x | y), p(y) the training shares; the per-class NLL sums the log-softmax
    of the target tokens, pad positions excluded."""
    model, x, y = _trained(family)
    xs, ys = x[:6], y[:6]
    per_class = torch.stack([model.score(xs, torch.full((6,), k)) for k in range(3)], 1).double()
    prior = model.class_counts / model.class_counts.sum()
    assert torch.allclose(prior, torch.tensor([1 / 3] * 3, dtype=torch.float64))
    marginal = -torch.logsumexp(prior.log() - per_class, 1)
    assert torch.allclose(model.score(xs).double(), marginal, atol=1e-4)
    lp = torch.log_softmax(model.logits(xs[:, :-1], ys), -1).gather(2, xs[:, 1:, None])[..., 0]
    by_hand = -torch.where(xs[:, 1:] != PAD, lp, 0.0).sum(1)
    assert torch.allclose(model.score(xs, ys), by_hand, atol=1e-4)


# --- the sampling rule ----------------------------------------------------------------------------
def test_temperature_top_k_and_top_p_semantics():
    logits = np.log(np.array([[0.0, 0.0, 0.1, 0.2, 0.3, 0.4]]) + 1e-300)
    w = filtered_weights(logits)
    assert np.allclose(w / w.sum(), [[0, 0, 0.1, 0.2, 0.3, 0.4]])
    w = filtered_weights(logits, top_k=2)
    assert np.allclose(w / w.sum(), [[0, 0, 0, 0, 3 / 7, 4 / 7]])
    w = filtered_weights(logits, top_p=0.65)                                # 0.4 + 0.3 >= 0.65: two tokens
    assert np.count_nonzero(w) == 2 and w[0, 5] > w[0, 4] > 0
    w = filtered_weights(logits, top_p=0.7)                                 # exactly 0.7: still two
    assert np.count_nonzero(w) == 2
    hot, cold = filtered_weights(logits, temperature=2.0), filtered_weights(logits, temperature=0.5)
    assert (cold / cold.sum())[0, 5] > 0.4 > (hot / hot.sum())[0, 5]
    # inverse CDF over ids: u below 0.1 of the mass -> id 2, the top of the mass -> id 5
    assert draw_tokens(logits.repeat(3, 0), np.array([0.05, 0.5, 0.99], np.float32)).tolist() == [2, 4, 5]
    assert draw_tokens(logits.repeat(2, 0), np.array([0.0, 0.5], np.float32), done=np.array([True, False]),
                       force_eos=True).tolist() == [PAD, EOS]


def test_top_k_one_is_greedy_and_max_len_forces_the_end():
    model, _, _ = _trained("gpt")
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = model.sample(5, labels=torch.zeros(5, dtype=torch.long), generator=g(0), top_k=1)
    b = model.sample(5, labels=torch.zeros(5, dtype=torch.long), generator=g(1), top_k=1)
    assert torch.equal(a, b)                                                # greedy: the seed does not matter
    short = model.sample(8, generator=g(0), max_len=2)
    assert ((short[:, 1:4] == EOS).any(1)).all() and (short[:, 4:] == PAD).all()


def test_sampling_options_are_validated_and_not_config():
    model, _, _ = _trained("bigram", 1)
    for bad in (dict(temperature=0), dict(top_k=0), dict(top_p=1.5), dict(max_len=11), dict(steps=3)):
        with pytest.raises(SamplerSpecError):
            model.sample(2, **bad)
    assert "temperature" not in model.config.to_dict() and model.sampling["max_len"] == 10
    spec = SamplerSpec.from_json(model.sampler().with_sampling(temperature=0.8, top_p=0.9).to_json())
    assert spec.sampling_defaults() == {"temperature": 0.8, "top_k": None, "top_p": 0.9, "max_len": 10}


# --- torch and numpy loops ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from serving.export import export_model

    out = {}
    for family in ("gpt", "lstm", "bigram"):
        model, _, _ = _trained(family)
        folder = tmp_path_factory.mktemp(family) / "onnx"
        report = export_model(model, folder)
        assert report["passed"] and report["max_abs_error"] <= 1e-4
        sessions = {g: ort.InferenceSession(str(folder / f"{g}.onnx"), providers=["CPUExecutionProvider"])
                    for g in ("prefill", "decode")}
        out[family] = (model, sessions)
    return out


@pytest.mark.parametrize("family", ["gpt", "lstm", "bigram"])
@pytest.mark.parametrize("options", [{}, dict(temperature=0.7, top_k=5), dict(top_p=0.8, max_len=4)],
                         ids=["plain", "temp-topk", "topp-maxlen"])
def test_torch_sample_and_the_numpy_loop_give_the_same_tokens(exported, family, options):
    from serving.sampler_tokens import sample_from_uniforms

    model, sessions = exported[family]
    n = 12
    labels = torch.arange(n) % 3
    u = torch.rand((n, model.length - 1), generator=torch.Generator().manual_seed(3))
    spec = model.sampler().with_sampling(**options)
    via_torch = model.sample_from_uniforms(u.numpy(), labels, spec).numpy()
    via_ort = sample_from_uniforms(spec, sessions, u.numpy(), labels.numpy())
    recompute = sample_from_uniforms(spec, sessions, u.numpy(), labels.numpy(), cached=False)
    assert np.array_equal(via_torch, via_ort) and np.array_equal(via_ort, recompute)
    # model.sample draws those uniforms from the generator: the same tokens again
    again = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(3), **options).numpy()
    assert np.array_equal(again, via_torch)


def test_run_sampler_is_deterministic_for_a_seed_and_checks_the_graphs(exported):
    from serving.samplers import check_sessions, run_sampler

    model, sessions = exported["gpt"]
    spec = model.sampler()
    check_sessions(spec, sessions)
    labels = np.array([0, 1, 2, 2], dtype=np.int64)
    a = run_sampler(spec, sessions, 4, np.random.default_rng(7), labels)
    b = run_sampler(spec, sessions, 4, np.random.default_rng(7), labels)
    assert a.dtype == np.int64 and a.shape == (4, model.length) and np.array_equal(a, b)
    with pytest.raises(SamplerSpecError, match="takes inputs"):
        check_sessions(spec, {"prefill": sessions["prefill"], "decode": exported["lstm"][1]["decode"]})


def test_gpt_decode_graph_writes_its_kv_cache_in_place(exported):
    """The decode graph's attention is ORT's GroupQueryAttention; bound output = input, it writes position t of
    the same buffer (no copy per token) and gives the logits of the unbound run."""
    import onnx

    from serving.sampler_tokens import _InPlaceStep, ort_value

    model, sessions = exported["gpt"]
    spec = model.sampler()
    path = sessions["decode"]._model_path
    assert "GroupQueryAttention" in {n.op_type for n in onnx.load(path).graph.node}
    assert spec.cache == "kv_static" and spec.to_json()["position_input"] == "position"
    n, t = 3, 4
    caches = [np.asarray(c, dtype=np.float32) for c in model.example_state(n, t)]          # positions 0..t-1 set
    state = [ort_value(c.copy()) for c in caches]
    step = _InPlaceStep(spec, sessions["decode"], state, {}, n)
    tokens = np.array([5, 6, 7])
    logits = step(tokens, t).copy()
    plain = sessions["decode"].run(None, {"token": tokens[:, None], "position": np.array(t),
                                          **{i: c for (i, _), c in zip(spec.state, caches)}})
    assert np.allclose(logits, plain[0], atol=1e-5)
    for buf, before, after in zip(state, caches, plain[1:]):
        now = buf.numpy()
        assert np.array_equal(now[:, :, :t], before[:, :, :t]) and np.allclose(now[:, :, t], after[:, :, t], atol=1e-6)
        assert not now[:, :, t + 1:].any()


# --- the spec -------------------------------------------------------------------------------------
def _token_spec(**change) -> dict:
    model, _, _ = _trained("lstm", 0)
    return {**model.sampler().to_json(), **change}


@pytest.mark.parametrize("change, message", [
    (dict(max_len=11), r"max_len must be an int in \[1, 10\] \(the stored length 12 minus <bos> and <eos>\), got 11"),
    (dict(state=[["h"]]), r"state must be a list of \[input, output\] name pairs"),
    (dict(cache="none"), r"cache 'none' with state \[\('h', 'h_next'\), \('c', 'c_next'\)\]: a cache needs state"),
    (dict(cache="paged"), r"cache 'paged' is not implemented \(known: kv, kv_static, rnn, none\)"),
    (dict(eos=1), "bos, eos and pad must be three different ids"),
    (dict(top_p=0), r"top_p must be a number in \(0, 1\] or null, got 0"),
    (dict(vocab_size=None), "vocab_size must be a positive int"),
])
def test_a_bad_token_spec_is_one_error(change, message):
    with pytest.raises(SamplerSpecError, match=f"^token_autoregressive sampler: {message}"):
        SamplerSpec.from_json(_token_spec(**change))


def test_the_token_spec_round_trips_and_names_its_graphs():
    spec = SamplerSpec.from_json(_token_spec())
    assert SamplerSpec.from_json(spec.to_json()) == spec and spec.graphs_used() == ("decode", "prefill")
    assert spec.to_json()["state"] == [["h", "h_next"], ["c", "c_next"]] and spec.cache_shape == (2, 16)
    with pytest.raises(SamplerSpecError, match="names graph 'prefill'"):
        spec.check_graphs(["decode"])


def test_generate_writes_text_with_sampling_options_deterministically(exported, tmp_path):
    """The generator runs the token sampler with no text special case: options from the call, labels by class
    name, the same shards for the same seed; the ids decode to the texts of the shards."""
    from serving.export import export_model
    from serving.generator import GenerationError, generate, iter_samples

    model, _ = exported["gpt"]
    folder = tmp_path / "onnx"
    export_model(model, folder)
    opts = {"temperature": 0.8, "top_k": 5, "max_len": 6}
    a = generate(folder, 6, 0, tmp_path / "a", batch_size=4, label="surname", sampling=opts)
    b = generate(folder, 6, 0, tmp_path / "b", batch_size=4, label="surname", sampling=opts)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["sampling"] == opts and sum(s["count"] for s in a["shards"]) == 6
    ids, labels = map(np.concatenate, zip(*iter_samples(tmp_path / "a")))
    assert ids.shape == (6, model.length) and set(labels.tolist()) == {2}
    from contracts.modalities.tokens import tokenizer

    assert all(len(t) <= 6 for t in tokenizer(model.config.data.vocab).decode_batch(ids))   # max_len 6
    with pytest.raises(GenerationError, match="steps"):
        generate(folder, 2, 0, tmp_path / "c", sampling={"steps": 3})


@pytest.mark.parametrize("family", ["gpt", "lstm", "bigram"])
def test_unlabelled_data_gives_an_unconditional_model_that_serves_the_same_tokens(family, tmp_path):
    import dataclasses

    from serving.export import export_model
    from serving.sampler_tokens import sample_from_uniforms

    spec, x, _ = names_tokens()
    model = build_model(family, {"data": dataclasses.replace(spec, num_classes=0, class_names=()), **TINY[family]})
    model.fit_step(torch.from_numpy(x), None)
    model.eval()
    assert "conditional" not in model.capabilities and not model.sampler().conditional
    export_model(model, tmp_path / "onnx")
    sessions = {g: ort.InferenceSession(str(tmp_path / "onnx" / f"{g}.onnx")) for g in ("prefill", "decode")}
    assert "labels" not in {i.name for s in sessions.values() for i in s.get_inputs()}
    u = np.random.default_rng(0).random((5, model.length - 1), dtype=np.float32)
    assert np.array_equal(model.sample_from_uniforms(u, None).numpy(), sample_from_uniforms(model.sampler(), sessions, u))
