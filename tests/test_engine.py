"""Engine: KV-cached decoding equals full recomputation; sampling, batching, truncation and tool use."""
import pytest
import torch
import torch.nn as nn

from nanochat.common import NanochatError
from nanochat.engine import Engine, KVCache, sample_next
from nanochat.gpt import GPT, GPTConfig
from nanochat.recipe import get_preset
from nanochat.tokenizer import Tokenizer

TOK = Tokenizer.byte_level()
BOS = TOK.encode_special("<|bos|>")
END = TOK.encode_special("<|assistant_end|>")
PY_START, PY_END = TOK.encode_special("<|python_start|>"), TOK.encode_special("<|python_end|>")
OUT_START, OUT_END = TOK.encode_special("<|output_start|>"), TOK.encode_special("<|output_end|>")

# the jul2026 preset's model switches (as nanochat.recipe states them)
JUL2026 = dict(window_pattern="SSSL", short_window_frac=0.25, short_window_multiple=128, value_embeds=True,
               ve_gate_channels=12, ve_gate_scale=3.0, resid_scalars=True, smear=True, backout=True, qk_scale=1.2,
               rope_base=100000.0, logit_softcap=15.0, init="jul2026")
FEATURES = {
    "plain": {},
    "windows": dict(window_pattern="SL"),
    "ve_resid": dict(value_embeds=True, resid_scalars=True),
    "all": dict(window_pattern="SSL", value_embeds=True, resid_scalars=True, init="jan2026", n_layer=3),
    # the presets' model switches; short windows rounded to 8 so that they are shorter than the 64-token context
    "v0": get_preset("v0").model,
    "jan2026": {**get_preset("jan2026").model, "n_layer": 4},
    "jul2026": dict(JUL2026, short_window_multiple=8, n_layer=4),
    "smear_only": dict(smear=True, n_layer=3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, scale: float = 0.3, **kw) -> GPT:
    cfg = dict(sequence_len=64, vocab_size=300, n_layer=2, n_head=2, n_kv_head=1, n_embd=64)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg))
    torch.manual_seed(seed)
    model.init_weights()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # give the zero-initialised projections, lm_head, gates and scalars some weight
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        if model.x0_lambdas is not None:
            model.x0_lambdas.copy_(torch.rand(model.config.n_layer, generator=g))
            model.resid_lambdas.copy_(0.5 + torch.rand(model.config.n_layer, generator=g))
        if model.smear_gate is not None:  # smear starts switched off (lambda 0): switch it on
            model.smear_lambda.fill_(0.8)
            model.smear_gate.weight.copy_(torch.randn(model.smear_gate.weight.shape, generator=g))
        if model.backout_lambda is not None:
            model.backout_lambda.fill_(0.4)
    return model


@torch.no_grad()
def greedy_full_recompute(model: GPT, prompt: list[int], n: int, ban: int | None = None) -> list[int]:
    ids, out = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1]
        if ban is not None:
            logits[ban] = float("-inf")
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


@pytest.mark.parametrize("name", list(FEATURES))
def test_cached_greedy_equals_full_recompute(name):
    model = tiny_model(**FEATURES[name])
    prompt = [BOS] + list(range(40, 60))
    # 21 + 60 = 81 positions: past the 16-token short windows and past the 64-token training context
    cached = [t[0] for t, _ in Engine(model).generate(prompt, max_tokens=60, temperature=0.0)]
    assert cached == greedy_full_recompute(model, prompt, 60)
    assert len(set(cached)) > 5  # the model is not trivial


@pytest.mark.parametrize("name", ["plain", "all", "jul2026"])
def test_cached_logits_match_every_position(name):
    model = tiny_model(**FEATURES[name])
    ids = torch.randint(0, 300, (2, 70), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = KVCache.for_model(model, 2, 70)
    with torch.no_grad():
        got = [model(ids[:, :20], kv_cache=cache)[:, -1]]
        # a second multi-token chunk continues from the cache (smear: from the carried embedding)
        got.append(model(ids[:, 20:30], kv_cache=cache)[:, -1])
        for t in range(30, 70):
            got.append(model(ids[:, t : t + 1], kv_cache=cache)[:, -1])
    assert cache.pos == 70
    torch.testing.assert_close(torch.stack(got, 1), torch.cat([full[:, 19:20], full[:, 29:]], 1), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("name", ["all", "jul2026"])
def test_left_padded_multi_token_forward_matches_unpadded(name):
    """A padded cache fed several tokens at once (masked prefill) gives each row its unpadded result
    (with smear: a row's first real token takes nothing from the padding before it)."""
    model = tiny_model(**FEATURES[name])
    prompts = [list(range(10, 40)), list(range(50, 62))]
    cache = KVCache.for_model(model, 2, 40, pad=[0, 18])
    with torch.no_grad():
        padded = model(torch.tensor([prompts[0], [0] * 18 + prompts[1]]), kv_cache=cache)[:, -1]
        step = model(torch.tensor([[7], [8]]), kv_cache=cache)[:, -1]
        for r, p in enumerate(prompts):
            full = model(torch.tensor([p + [7 + r]]))[0]
            torch.testing.assert_close(padded[r], full[-2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(step[r], full[-1], atol=1e-4, rtol=1e-4)


def test_cache_dtype_follows_the_model():
    model = tiny_model(**FEATURES["all"]).to(torch.bfloat16)
    cache = KVCache.for_model(model, 1, 8)
    assert cache.k.dtype == torch.bfloat16 and cache.k.shape == (3, 1, 1, 8, 32)
    out = list(Engine(model, TOK).generate([BOS, 1, 2], max_tokens=5, temperature=0.0))
    assert len(out) >= 1
    assert KVCache.for_model(tiny_model().double(), 1, 4).k.dtype == torch.float64


def test_samples_differ_from_the_first_token_and_are_reproducible():
    model = tiny_model(scale=0.05)  # nearly flat distributions
    engine = Engine(model, TOK)
    prompt = [BOS, 10, 20, 30]
    torch.manual_seed(5)
    rng_before = torch.random.get_rng_state()
    a, _ = engine.generate_batch(prompt, num_samples=8, max_tokens=6, temperature=1.0, seed=1)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # global RNG untouched
    assert len({row[0] for row in a}) > 1  # each row sampled its own first token
    b, _ = engine.generate_batch(prompt, num_samples=8, max_tokens=6, temperature=1.0, seed=1)
    c, _ = engine.generate_batch(prompt, num_samples=8, max_tokens=6, temperature=1.0, seed=2)
    assert a == b and a != c
    greedy, _ = engine.generate_batch(prompt, num_samples=3, max_tokens=6, temperature=0.0)
    assert greedy[0] == greedy[1] == greedy[2]


@pytest.mark.parametrize("name", ["all", "jul2026"])
def test_batched_prompts_of_different_lengths_match_one_at_a_time(name):
    model = tiny_model(**FEATURES[name])
    engine = Engine(model, TOK)
    prompts = [[BOS, 5, 6, 7], [BOS] + list(range(100, 130)), [BOS] + list(range(60, 72))]
    batched, masks = engine.generate_batch(prompts, num_samples=2, max_tokens=24, temperature=0.0)
    assert len(batched) == 6
    for i, p in enumerate(prompts):
        single, _ = engine.generate_batch(p, max_tokens=24, temperature=0.0)
        assert batched[2 * i] == batched[2 * i + 1] == single[0]
        assert single[0] == greedy_full_recompute(model, p, 24, ban=BOS)[: len(single[0])]
    assert all(m == [1] * len(r) for m, r in zip(masks, batched))


def test_long_prompt_errors_or_is_truncated_from_the_left():
    model = tiny_model()
    engine = Engine(model, TOK)
    prompt = list(range(1, 80))
    with pytest.raises(NanochatError, match="context of 64"):
        engine.generate_batch(prompt, max_tokens=3)
    left, _ = engine.generate_batch(prompt, max_tokens=5, temperature=0.0, truncate="left")
    assert left == engine.generate_batch(prompt[-64:], max_tokens=5, temperature=0.0)[0]
    with pytest.raises(NanochatError, match="rotary table"):
        engine.generate_batch([1, 2], max_tokens=10_000)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_samples=0), dict(max_tokens=-1), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0),
     dict(top_p=1.5), dict(truncate="right")],
)
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(NanochatError):
        Engine(tiny_model(), TOK).generate_batch([BOS, 1], **kwargs)


@pytest.mark.parametrize("prompts", [[], [[]], [1, 999], "hello"])
def test_bad_prompts_are_user_errors(prompts):
    with pytest.raises(NanochatError):
        Engine(tiny_model(), TOK).generate_batch(prompts, max_tokens=2)


def test_sample_next_top_k_top_p():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]] * 4)
    rng = torch.Generator().manual_seed(0)
    assert sample_next(logits, rng, 0.0).tolist() == [1] * 4
    assert sample_next(logits, rng, 1.0, top_k=1).tolist() == [1] * 4
    assert sample_next(logits, rng, 1.0, top_p=0.01).tolist() == [1] * 4
    draws = torch.cat([sample_next(logits, rng, 1.0, top_k=2) for _ in range(50)])
    assert set(draws.tolist()) == {1, 2}
    draws = torch.cat([sample_next(logits, rng, 1.0, top_p=0.5) for _ in range(50)])
    assert set(draws.tolist()) == {1, 2}  # 3.0 alone has p < 0.5, so 2.9 joins; nothing else
    draws = torch.cat([sample_next(logits, rng, 5.0, top_k=4, top_p=0.99) for _ in range(100)])
    assert set(draws.tolist()) <= {0, 1, 2, 4}


class ScriptedModel(nn.Module):
    """Stands in for a GPT: row r emits scripts[r] one token per *sampled* step, with a huge logit.

    It replays the tokens fed back to it and skips the tool-output blocks the engine forced, so its
    script only lists what the model itself writes. `favourite` gets a large logit too (e.g. BOS).
    """

    def __init__(self, scripts, favourite=None):
        super().__init__()
        self.config = GPTConfig(sequence_len=64, vocab_size=TOK.vocab_size, n_layer=1, n_head=1, n_kv_head=1,
                                n_embd=8)
        self.rotary_len = 640
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(1, 1)})
        self.scripts, self.favourite = scripts, favourite
        self.fed = None

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        if kv_cache.pos == 0:
            self.fed = [[] for _ in range(B)]  # prefill (one row per prompt)
        else:
            if len(self.fed) != B:  # the prefill's rows were copied num_samples times each
                self.fed = [list(self.fed[r * len(self.fed) // B]) for r in range(B)]
            for r in range(B):
                self.fed[r].append(int(idx[r, 0]))
        kv_cache.advance(T)
        logits = torch.zeros(B, 1, self.config.vocab_size)
        for r in range(B):
            written, forced = 0, False
            for t in self.fed[r]:
                forced = forced or t == OUT_START
                written += not forced
                forced = forced and t != OUT_END
            script = self.scripts[r % len(self.scripts)]
            logits[r, 0, script[min(written, len(script) - 1)]] = 30.0
            if self.favourite is not None:
                logits[r, 0, self.favourite] = 50.0
        return logits


def test_tool_use_forces_the_calculator_output():
    written = [PY_START, *TOK.encode("12*(3+4)"), PY_END, *TOK.encode(" ok"), END]
    engine = Engine(ScriptedModel([written]), TOK)
    steps = list(engine.generate([BOS, 1, 2], max_tokens=40, temperature=0.0))
    tokens = [t[0] for t, _ in steps]
    masks = [m[0] for _, m in steps]
    forced = [OUT_START, *TOK.encode("84"), OUT_END]
    expected = [PY_START, *TOK.encode("12*(3+4)"), PY_END, *forced, *TOK.encode(" ok"), END]
    assert tokens == expected
    n_code = 2 + len("12*(3+4)")
    assert masks == [1] * n_code + [0] * len(forced) + [1] * 4
    # generate_batch: completions without the stop token, masks aligned
    out, out_masks = engine.generate_batch([BOS, 1, 2], max_tokens=40, temperature=0.0)
    assert out == [expected[:-1]] and out_masks == [masks[:-1]]


def test_tool_use_per_row_and_errors_and_spelling():
    spell = [PY_START, *TOK.encode("'strawberry'.count('r')"), PY_END, END]
    evil = [PY_START, *TOK.encode("__import__('os').system('x')"), PY_END, END]
    plain = [*TOK.encode("hi"), END]
    engine = Engine(ScriptedModel([spell, evil, plain]), TOK)
    out, masks = engine.generate_batch([[BOS, 1], [BOS, 2], [BOS, 3]], max_tokens=120, temperature=0.0)
    assert TOK.decode(out[0]).endswith("<|output_start|>3<|output_end|>")
    text = TOK.decode(out[1])
    assert "<|output_start|>Error: " in text and text.endswith("<|output_end|>")
    assert out[2] == TOK.encode("hi") and masks[2] == [1, 1]
    # a finished row keeps yielding its stop token with mask 0 while the others run
    steps = list(engine.generate([[BOS, 1], [BOS, 2], [BOS, 3]], max_tokens=120, temperature=0.0))
    assert steps[2][0][2] == END and steps[2][1][2] == 1
    assert all(t[2] == END and m[2] == 0 for t, m in steps[3:])
    # without tools nothing is forced
    out, masks = engine.generate_batch([BOS, 1], max_tokens=60, temperature=0.0, use_tools=False)
    assert OUT_START not in out[0] and all(masks[0])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bos_is_never_sampled(temperature):
    model = ScriptedModel([[65]], favourite=BOS)  # BOS has by far the largest logit
    out, _ = Engine(model, TOK).generate_batch([BOS, 1], num_samples=4, max_tokens=10, temperature=temperature)
    assert all(row == [65] * 10 for row in out)


def test_gpt_generate_is_a_wrapper_over_the_engine():
    model = tiny_model(**FEATURES["windows"])
    prompt = list(range(30, 50))
    via_gpt = list(model.generate(prompt, max_tokens=12, temperature=0.7, top_k=20, seed=3))
    via_engine, _ = Engine(model).generate_batch(prompt, max_tokens=12, temperature=0.7, top_k=20, seed=3)
    assert via_gpt == via_engine[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_cache_matches_full_recompute():
    model = tiny_model(**FEATURES["all"]).cuda()
    prompt = [BOS] + list(range(40, 60))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        engine = Engine(model, TOK)
        assert KVCache.for_model(model, 1, 4).k.dtype == torch.bfloat16
        out, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=30, temperature=1.0, top_k=50)
    assert len(out) == 4 and all(BOS not in row for row in out)
    model = model.double()
    cached = [t[0] for t, _ in Engine(model).generate(prompt, max_tokens=40, temperature=0.0)]
    assert cached == greedy_full_recompute(model, prompt, 40)
