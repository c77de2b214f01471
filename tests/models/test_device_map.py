"""Models past one device (issue 21, part 1): `verilens.load(..., device_map=...)`.

countdown-tiny and SmolLM2-135M, split by an explicit device_map with some layers (and,
for countdown-tiny, the final norm and the unembedding) offloaded to disk, give the
numbers of the undispatched model in float32: logits, caches at positions, head and
neuron ablations (through the hooks and through the fused ops), steering, greedy tokens
of plain and triggered generation under the KV cache, and the weight views the analyses
read. On this CPU machine the devices are "cpu" and "disk"; on a CUDA machine the same
tests put layers on GPU 0 (and GPU 1 where there is one), offload others to the CPU and
to disk, and compare with the model on GPU 0."""
import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # the fused-op test runs the Triton kernels in the interpreter

import verilens  # noqa: E402
from verilens.countdown import generate_problems, prompt, write_trace  # noqa: E402
from verilens.models.loading import builtin_path  # noqa: E402

TOL = dict(rtol=0, atol=1e-5)


def _placement():
    """(main device, the devices layers cycle through) on this machine."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n >= 2:
        return "cuda:0", [0, "disk", 1, "cpu"]
    if n == 1:
        return "cuda:0", [0, "disk", "cpu"]
    return "cpu", ["cpu", "disk"]


MAIN, CYCLE = _placement()
MAIN_KEY = 0 if MAIN.startswith("cuda") else "cpu"


def split_map(n_layers: int, tied: bool) -> dict:
    """Embedding on the main device, layers cycling over CYCLE (layer 1, 3, ... on disk on
    a CPU machine); the final norm and an untied unembedding offloaded to disk."""
    m = {"model.embed_tokens": MAIN_KEY, "model.rotary_emb": MAIN_KEY}
    m.update({f"model.layers.{i}": CYCLE[i % len(CYCLE)] for i in range(n_layers)})
    m["model.norm"] = "disk"
    m["lm_head"] = MAIN_KEY if tied else "disk"  # a tied unembedding stays with the embedding
    return m


def _texts(short=False):
    """Two prompts of different lengths (a left-padded batch): a CountDown prompt with the
    start of a trace (~200 tokens; its last ~60 with `short`) and a shorter one."""
    ps = generate_problems(2, seed=4)
    long = prompt(ps[0]) + write_trace(ps[0], 0, max_failed=2)[:160]
    return [long[-200:], prompt(ps[1])[:100]] if short else [long, prompt(ps[1])[:120]]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    ref = verilens.load("countdown-tiny", device=MAIN, dtype=torch.float32)
    dm = split_map(ref.cfg.n_layers, tied=False)
    split = verilens.load("countdown-tiny", device_map=dm, offload_folder=tmp_path_factory.mktemp("offload-tiny"),
                          dtype=torch.float32)
    return ref, split


@pytest.fixture(scope="module")
def smol_pair(smollm2_dir, tmp_path_factory):
    ref = verilens.load(smollm2_dir, device=MAIN, dtype=torch.float32)
    dm = split_map(ref.cfg.n_layers, tied=True)
    for i in range(10, 14):  # a run of offloaded layers too
        dm[f"model.layers.{i}"] = "disk"
    split = verilens.load(smollm2_dir, device_map=dm, offload_folder=tmp_path_factory.mktemp("offload-smol"),
                          dtype=torch.float32)
    return ref, split


@pytest.fixture(params=["countdown-tiny", "smollm2"])
def pair(request):
    """(reference, split model, texts): SmolLM2 gets shorter texts (2 shared CPU cores)."""
    tiny = request.param == "countdown-tiny"
    ref, split = request.getfixturevalue("tiny_pair" if tiny else "smol_pair")
    return ref, split, _texts(short=not tiny)


def _offloaded_layers(m):
    return [l for l in range(m.cfg.n_layers) if m.module(l, "o").weight.is_meta]


def test_the_split_is_real(pair):
    # the dispatched model really holds some layers on disk (meta until their forward)
    ref, split, _ = pair
    assert split.hf_model.hf_device_map
    assert "disk" in split.hf_model.hf_device_map.values()
    assert len(_offloaded_layers(split)) >= 2 and not _offloaded_layers(ref)
    assert split.device == ref.device == torch.device(MAIN)


def test_logits_and_cache_at_positions(pair):
    ref, split, texts = pair
    L = ref.cfg.n_layers
    names = (lambda n: n.endswith(("hook_resid_post", "hook_z", "mlp.hook_post", "ln2.hook_scale", "hook_attn_out"))
             or n in (f"blocks.{L - 1}.attn.hook_pattern", f"blocks.1.attn.hook_result", "ln_final.hook_normalized"))
    pos = [[3, 20], [7, 11]]
    with torch.no_grad():
        assert torch.allclose(split(texts), ref(texts), **TOL)
        a_logits, a = ref.run_with_cache(texts, names_filter=names, positions=pos, device="cpu")
        b_logits, b = split.run_with_cache(texts, names_filter=names, positions=pos, device="cpu")
    torch.testing.assert_close(b_logits, a_logits, **TOL)
    assert sorted(a.keys()) == sorted(b.keys()) and len(a.keys()) >= 4 * L
    for k in a.keys():
        assert b[k].device == torch.device("cpu"), k
        assert b[k].shape == a[k].shape and b[k].shape[:2] == (2, 2) or "pattern" in k, k
        torch.testing.assert_close(b[k], a[k], **TOL, msg=k)


def test_head_neuron_ablations_and_steering(pair):
    ref, split, texts = pair
    L, H = ref.cfg.n_layers, ref.cfg.n_heads
    off = _offloaded_layers(split)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(ref.cfg.d_model, generator=g)
    conditions = [
        [verilens.ablate_heads([(off[0], 0), (off[1], H - 1), (0, 1)])],
        [verilens.ablate_heads([(off[0], 2)], mode="mean", reference=texts)],
        [verilens.ablate_neurons({off[0]: [0, 5, 17], L - 1: [3]}, positions="all")],
        [verilens.steer(direction, layers=[off[0]], alpha=4.0), verilens.project_out(direction, layers=[off[1]])],
    ]
    with torch.no_grad():
        clean = ref(texts)
        for ivs in conditions:
            with ref.intervene(*ivs):
                a = ref(texts)
            with split.intervene(*ivs):
                b = split(texts)
            assert (a - clean).abs().max() > 1e-3, ivs  # the condition changes the model
            torch.testing.assert_close(b, a, **TOL, msg=repr(ivs))


def test_fused_ops_read_the_offloaded_weights(tiny_pair, monkeypatch):
    # The fused o_proj / GLU ops read the weights of o_proj and down_proj themselves: on a
    # disk-offloaded layer they must run inside accelerate's onload (real weights), not
    # on the meta tensors the module holds between forwards.
    import verilens.kernels.head_masked_o_proj as o
    import verilens.kernels.masked_glu as glu

    ref, split = tiny_pair
    calls = {"o": 0, "glu": 0}
    for mod, fn, key in ((o, "head_masked_o_proj_triton", "o"), (glu, "masked_glu_triton", "glu")):
        real = getattr(mod, fn)

        def counted(*a, _real=real, _key=key, **k):
            calls[_key] += 1
            return _real(*a, **k)
        monkeypatch.setattr(mod, fn, counted)
    l = _offloaded_layers(split)[0]
    texts = [t[:80] for t in _texts()]
    before = {id(m): m.__dict__.get("_old_forward") for m in split.hf_model.modules()}
    out = {}
    for m in (ref, split):
        m.backend = "triton"
        try:
            with torch.no_grad(), m.intervene(verilens.ablate_heads([(l, 1), (l, 4)]),
                                              verilens.ablate_neurons({l: [2, 9]}, positions="all")):
                out[m] = m.run_with_cache(texts, names_filter=[f"blocks.{l}.attn.hook_result"], positions="last")
        finally:
            m.backend = "auto"
    assert calls["o"] >= 2 and calls["glu"] >= 2
    torch.testing.assert_close(out[split][0], out[ref][0], **TOL)
    torch.testing.assert_close(out[split][1][f"blocks.{l}.attn.hook_result"],
                               out[ref][1][f"blocks.{l}.attn.hook_result"], **TOL)
    # accelerate's forwards are back as they were, and the layer is offloaded again
    assert {id(m): m.__dict__.get("_old_forward") for m in split.hf_model.modules()} == before
    assert split.module(l, "o").weight.is_meta


def test_greedy_generation_plain_and_triggered(pair):
    ref, split, texts = pair
    texts = [texts[0][:150], texts[1]]
    g1, g2 = ref.generate(texts, max_new_tokens=8), split.generate(texts, max_new_tokens=8)
    assert torch.equal(g1.tokens, g2.tokens)
    l = _offloaded_layers(split)[0]
    names = [f"blocks.{l}.hook_resid_post", f"blocks.{l}.attn.hook_z", f"blocks.{l}.attn.hook_pattern"]
    for ivs in ([verilens.ablate_heads([(l, 0), (l, 2)])], [verilens.ablate_neurons({l: [1, 4]}, positions="last")]):
        # the trigger fires on the prompt's " (" where a row ends in one, and on every
        # generated " ("; the generation runs under the KV cache (two caches / last mode)
        rows = [texts[0] + " (", texts[1]]
        out = []
        for m in (ref, split):
            with m.intervene(*ivs, when=verilens.at_token(" (")):
                out.append(m.generate(rows, max_new_tokens=8, cache_names=names))
        a, b = out
        assert torch.equal(a.tokens, b.tokens), ivs
        for n in names:
            torch.testing.assert_close(b.cache[n], a.cache[n], **TOL, msg=n)


def test_weight_views_read_the_real_weights(pair):
    ref, split, _ = pair
    off = _offloaded_layers(split)
    keys = ["W_Q", "W_K", "W_V", "W_O", "W_gate", "W_in", "W_out"]
    for k in keys:
        b = split.stacked(k)
        assert not b.is_meta, k
        torch.testing.assert_close(b, ref.stacked(k), rtol=0, atol=0, msg=k)
    lw_a, lw_b = ref.layer_weights(off[0]), split.layer_weights(off[0])
    assert lw_a.keys() == lw_b.keys()
    for k in lw_a:
        torch.testing.assert_close(lw_b[k], lw_a[k], rtol=0, atol=0, msg=k)
    for prop in ("W_U", "W_E", "final_norm_gain"):
        torch.testing.assert_close(getattr(split, prop), getattr(ref, prop), rtol=0, atol=0, msg=prop)
    torch.testing.assert_close(split.tokens_to_residual_directions([5, 9]), ref.tokens_to_residual_directions([5, 9]),
                               rtol=0, atol=0)
    torch.testing.assert_close(split.accumulated_bias(ref.cfg.n_layers - 1, mlp_input=True),
                               ref.accumulated_bias(ref.cfg.n_layers - 1, mlp_input=True), rtol=0, atol=0)
    # the channel scores (OV x GLU input alignment) from the weights alone
    from verilens.analysis import channel_scores

    neurons = [(off[0], 3), (off[1], 10), (0, 7)]
    torch.testing.assert_close(channel_scores(split, neurons, "paper"), channel_scores(ref, neurons, "paper"), **TOL)
    # reading them loaded nothing for good: the offloaded layers are on meta again
    assert _offloaded_layers(split) == off


def test_wrap_a_model_dispatched_by_accelerate(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    ref, _ = tiny_pair
    dm = split_map(ref.cfg.n_layers, tied=False)
    hf = AutoModelForCausalLM.from_pretrained(builtin_path("countdown-tiny"), dtype=torch.float32, device_map=dm,
                                              offload_folder=str(tmp_path))
    m = verilens.wrap(hf, tokenizer=ref.tokenizer)
    texts = _texts()
    with torch.no_grad():
        a, ca = ref.run_with_cache(texts, names_filter=lambda n: n.endswith("hook_resid_post"), positions="last")
        b, cb = m.run_with_cache(texts, names_filter=lambda n: n.endswith("hook_resid_post"), positions="last")
    torch.testing.assert_close(b, a, **TOL)
    for k in ca.keys():
        torch.testing.assert_close(cb[k], ca[k], **TOL)
    with pytest.raises(verilens.VerilensError, match="dispatched"):
        m.to("cpu")


@pytest.mark.slow  # dequantising the GGUF takes ~40 s here
def test_gguf_dispatched_by_accelerate(smollm2_gguf, smol_pair, tmp_path):
    # transformers refuses to offload a GGUF model; verilens dequantises it on the CPU and
    # dispatches it with accelerate: the same numbers as the converted folder
    ref, _ = smol_pair
    dm = split_map(ref.cfg.n_layers, tied=True)
    m = verilens.load(smollm2_gguf, device_map=dm, offload_folder=tmp_path, dtype=torch.float32)
    assert len(_offloaded_layers(m)) >= 2
    texts = _texts(short=True)
    with torch.no_grad():
        torch.testing.assert_close(m(texts), ref(texts), **TOL)
    with pytest.raises(verilens.VerilensError, match="offload_folder"):
        verilens.load(smollm2_gguf, device_map=dm)


# ----------------------------------------------------------------------------- bad input

def _full_map():
    return split_map(6, tied=False)


def _without(key):
    m = _full_map()
    del m[key]
    return m


BAD_MAPS = {
    "no such gpu": ({**_full_map(), "model.layers.2": "cuda:99"}, "cuda:99"),
    "no such gpu index": ({**_full_map(), "model.layers.2": 99}, "GPU 99 does not exist"),
    "meta": ({**_full_map(), "model.norm": "meta"}, "'meta' holds no weights"),
    "not a device": ({**_full_map(), "model.norm": "gpu"}, "unknown device 'gpu'"),
    "missing rotary": (_without("model.rotary_emb"), "no device to 'model.rotary_emb'"),
    "missing lm_head": (_without("lm_head"), "no device to 'lm_head'"),
    "missing a layer": (_without("model.layers.4"), "no device to 'model.layers.4' of"),
    "unknown module": ({**_full_map(), "model.layer.1": "cpu"}, "did you mean 'model.layers.1'"),
    "all on disk": ({k: "disk" for k in _full_map()}, "nothing to compute on|every module to 'disk'"),
    "not a map": (["cpu"], "device_map must be"),
}


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_bad_device_maps_are_refused_before_loading(case, tmp_path):
    dm, message = BAD_MAPS[case]
    with pytest.raises(verilens.VerilensError, match=message):
        verilens.load("countdown-tiny", device_map=dm, offload_folder=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_bad_placement_arguments():
    with pytest.raises(verilens.VerilensError, match="not both"):
        verilens.load("countdown-tiny", device="cpu", device_map="auto")
    with pytest.raises(verilens.VerilensError, match="go with a device_map"):
        verilens.load("countdown-tiny", max_memory={"cpu": "1GiB"})
    with pytest.raises(verilens.VerilensError, match="max_memory must be a dict"):
        verilens.load("countdown-tiny", device_map="auto", max_memory="1GiB")


def test_wrap_refuses_weights_stranded_on_meta(tiny_pair):
    # a model with weights left on the meta device (older transformers load a map naming
    # "meta" without a word; here one module is moved there): wrapping it is refused before
    # any run
    from transformers import AutoModelForCausalLM

    ref, _ = tiny_pair
    hf = AutoModelForCausalLM.from_pretrained(builtin_path("countdown-tiny"), dtype=torch.float32)
    hf.model.norm.to("meta")
    with pytest.raises(verilens.VerilensError, match="meta device with nothing to load them"):
        verilens.wrap(hf, tokenizer=ref.tokenizer)


def test_auto_map_with_a_memory_budget(tiny_pair, tmp_path):
    # device_map="auto" with a small CPU budget spills the later modules to disk
    ref, _ = tiny_pair
    m = verilens.load("countdown-tiny", device_map="auto", max_memory={MAIN_KEY: "1MB", "cpu": "1MB"},
                      offload_folder=tmp_path, dtype=torch.float32)
    assert "disk" in m.hf_model.hf_device_map.values()
    texts = _texts()
    with torch.no_grad():
        torch.testing.assert_close(m(texts), ref(texts), **TOL)
    g1, g2 = ref.generate(texts, max_new_tokens=6), m.generate(texts, max_new_tokens=6)
    assert torch.equal(g1.tokens, g2.tokens)


def test_fuse_on_a_dispatched_model(tiny_pair):
    # verilens.fuse swaps the fused o_proj / GLU classes into the Hugging Face model; on a
    # dispatched model accelerate's forward calls a method bound to the old class, so the
    # swap must reach it, and the scales must live on the execution device (not meta)
    ref, split = tiny_pair
    l = _offloaded_layers(split)[0]
    texts = _texts()
    heads = torch.ones(ref.cfg.n_heads)
    heads[[0, 3]] = 0
    neurons = torch.ones(ref.cfg.d_mlp)
    neurons[[1, 8, 40]] = 0
    out = {}
    with torch.no_grad():
        clean = ref(texts)
        for m in (ref, split):
            fused = verilens.fuse(m.hf_model)
            try:
                fused.set_head_scale(l, heads)
                fused.set_neuron_scale(l, neurons)
                out[m] = m(texts)
            finally:
                fused.unfuse()
        assert (out[ref] - clean).abs().max() > 1e-3
        torch.testing.assert_close(out[split], out[ref], **TOL)
        torch.testing.assert_close(split(texts), clean, **TOL)  # unfused: the plain model again


def test_other_generation_modes_prefill_patch_and_pos_slice(tiny_pair):
    # the KV-cache modes not covered above ("plain" with edits inside the cache, "recompute"
    # for a mean ablation over the current pass), a prefill reused by two conditions, a
    # patch, and TransformerLens' pos_slice
    ref, split = tiny_pair
    texts = _texts()
    rows = [texts[0] + " (", texts[1]]
    l = _offloaded_layers(split)[1]
    conditions = [
        ([verilens.ablate_heads([(l, 1)])], None),
        ([verilens.ablate_heads([(l, 2)], mode="mean")], verilens.at_token(" (")),
        ([verilens.patch(f"blocks.{l}.hook_mlp_out", lambda x, hook: 0.5 * x)], None),
    ]
    for ivs, when in conditions:
        out = []
        for m in (ref, split):
            with m.intervene(*ivs, when=when):
                out.append(m.generate(rows, max_new_tokens=8, cache_names=[f"blocks.{l}.hook_resid_post"]))
        assert torch.equal(out[0].tokens, out[1].tokens), ivs
        torch.testing.assert_close(out[1].cache[f"blocks.{l}.hook_resid_post"],
                                   out[0].cache[f"blocks.{l}.hook_resid_post"], **TOL)
    gens = {}
    for m in (ref, split):
        pre = m.prefill(rows)
        gens[m] = [m.generate(pre, max_new_tokens=8).tokens]
        with m.intervene(verilens.ablate_neurons({l: [0, 3]}, positions="last"), when=verilens.at_token(" (")):
            gens[m].append(m.generate(pre, max_new_tokens=8).tokens)
    assert all(torch.equal(a, b) for a, b in zip(gens[ref], gens[split]))
    with torch.no_grad():
        _, a = ref.run_with_cache(texts, names_filter=lambda n: n.endswith("attn.hook_z"), pos_slice=slice(-3, None))
        _, b = split.run_with_cache(texts, names_filter=lambda n: n.endswith("attn.hook_z"), pos_slice=slice(-3, None))
    for k in a.keys():
        assert b[k].shape[1] == 3
        torch.testing.assert_close(b[k], a[k], **TOL)


def test_gradient_caches(tiny_pair):
    # run_with_cache(incl_bwd=True): the backward pass runs through the offloaded layers
    ref, split = tiny_pair
    texts = _texts()
    l = _offloaded_layers(split)[0]
    names = [f"blocks.{l}.hook_resid_post", f"blocks.{l}.attn.hook_z", "blocks.0.hook_resid_pre"]
    la, a = ref.run_with_cache(texts, names_filter=names, incl_bwd=True, return_type="loss")
    lb, b = split.run_with_cache(texts, names_filter=names, incl_bwd=True, return_type="loss")
    ref.zero_grad()
    split.zero_grad()
    torch.testing.assert_close(lb, la, **TOL)
    assert sorted(a.keys()) == sorted(b.keys()) and len(a.keys()) == 6
    for k in a.keys():
        torch.testing.assert_close(b[k], a[k], **TOL, msg=k)


def test_command_line_device_map(tmp_path):
    """`verilens eval --device-map FILE.json --offload-folder DIR` (the same options as
    analyze) gives the undispatched model's metrics; a malformed map is one error line."""
    import json
    import subprocess
    import sys

    layers = verilens.load("countdown-tiny").cfg.n_layers
    (tmp_path / "map.json").write_text(json.dumps({k: str(v) for k, v in split_map(layers, tied=False).items()}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "verilens", "eval", "--n", "6", "--max-new-tokens", "120", *extra],
                              env=env, capture_output=True, text=True, timeout=600)
    plain = run()
    split = run("--device-map", str(tmp_path / "map.json"), "--offload-folder", str(tmp_path / "offload"))
    assert plain.returncode == 0 and split.returncode == 0, split.stderr[-2000:]
    assert json.loads(split.stdout) == json.loads(plain.stdout)
    bad = run("--device-map", '{"model.layers.0": ')
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("verilens: error: --device-map")
    (tmp_path / "far.json").write_text(json.dumps({"": "cuda:99"}))  # the map reaches verilens.load's checks
    far = run("--device-map", str(tmp_path / "far.json"))
    assert far.returncode == 2 and "cuda:99" in far.stderr.strip().splitlines()[-1]


def test_each_rank_on_a_node_gets_its_own_gpus():
    """Under torchrun with k ranks on a node of n GPUs, an automatic map spreads rank r's replica
    over GPUs [r * (n // k), (r + 1) * (n // k)) (the budget accelerate then fills), asking the
    free memory of those GPUs only; budgets the user gave are kept."""
    from verilens.models.device_map import check_map_under_ranks, rank_max_memory

    asked = []

    def free(device):
        asked.append(device)
        return 1000 if device == "cpu" else 80 + device

    assert rank_max_memory("auto", None, 1, 4, 8, free) == {2: 82, 3: 83, "cpu": 250} and asked == [2, 3, "cpu"]
    assert rank_max_memory("balanced", {3: "20GiB", "disk": "1TB"}, 1, 4, 8, free) == \
        {2: 82, 3: "20GiB", "cpu": 250, "disk": "1TB"}
    assert rank_max_memory("sequential", {"cpu": 7}, 2, 3, 8, free) == {4: 84, 5: 85, "cpu": 7}  # 6, 7 unused
    assert rank_max_memory("auto", None, 0, 1, 8, free) is None  # one rank per node: the whole node
    assert rank_max_memory("auto", None, 1, 2, 0, free) is None  # no GPU: accelerate's CPU / disk map
    assert rank_max_memory({"": "cpu"}, None, 1, 2, 8, free) is None  # an explicit map is the user's
    with pytest.raises(verilens.VerilensError, match="4 ranks on this node share 3 GPU"):
        rank_max_memory("auto", None, 0, 4, 3, free)
    with pytest.raises(verilens.VerilensError, match="LOCAL_RANK=2 but LOCAL_WORLD_SIZE=2"):
        rank_max_memory("auto", None, 2, 2, 8, free)
    with pytest.raises(verilens.VerilensError, match="same on all 2 ranks"):
        check_map_under_ranks({"model.embed_tokens": 0, "model.layers": "cuda:1"}, 2)
    check_map_under_ranks({"model.embed_tokens": 0}, 1)  # one rank per node
    check_map_under_ranks({"": "cpu"}, 2)  # no GPU named


def test_load_under_torchrun_env_on_cpu(tiny_pair, monkeypatch):
    """LOCAL_WORLD_SIZE from torchrun: on a machine without GPUs an automatic map is accelerate's
    as before (the same logits); a LOCAL_WORLD_SIZE that is not a number is named."""
    ref, _ = tiny_pair
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    m = verilens.load("countdown-tiny", device_map="auto", dtype=torch.float32)
    texts = _texts(short=True)
    with torch.no_grad():
        torch.testing.assert_close(m(texts), ref(texts), **TOL)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(verilens.VerilensError, match="LOCAL_WORLD_SIZE='two'"):
        verilens.load("countdown-tiny", device_map="auto")
