"""`verilens train countdown-tiny`: reproduce the built-in model from a seed.

Deterministic for a seed: batches depend only on (seed, step), so a run resumed from
a checkpoint sees exactly the batches an uninterrupted run would. Checkpoints are
written atomically every `checkpoint_every` steps into the output folder."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import VerilensError, check_out_folder
from .tiny import PINNED_DIGIT, TinySpec, collate, qwen2_config, spec_examples, train_problems, training_texts, weighted_loss
from .tokenizer import train_tokenizer

GROUP = 8  # batches are drawn GROUP at a time and bucketed by length to cut padding


def _atomic_write_text(path: Path, text: str):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path):
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def open_run(out_dir, spec) -> Path:
    """The run folder of `spec` (a dataclass), made if new: a folder holding the same
    spec.json resumes; one with another spec, a checkpoint without spec, or anything
    not ours is refused untouched (spec.json is written first, so its absence means
    the folder is not a verilens train run)."""
    check_out_folder(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    if spec_file.exists():
        try:
            saved = json.loads(spec_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise VerilensError(f"{spec_file} is damaged ({str(e)[:80]}), so the settings of the run in {out} are "
                                "unknown; use another --out, or delete that folder to train from step 0") from e
        now = json.loads(json.dumps(asdict(spec)))  # tuples as lists, as the file holds them
        if saved != now:
            differ = sorted((k for k in set(saved) | set(now) if saved.get(k) != now.get(k)), key=lambda k: (k != "model", k)) \
                if isinstance(saved, dict) else ["all"]
            raise VerilensError(f"{out} holds a run with different settings ({', '.join(differ[:6])}"
                                f"{' ...' if len(differ) > 6 else ''} differ); use another --out")
    elif (out / "checkpoint.pt").exists():
        raise VerilensError(f"{out} holds a checkpoint but no spec.json; use another --out, or delete that folder "
                            "to train from step 0")
    else:
        theirs = sorted(x.name for x in out.iterdir() if not x.name.endswith(".tmp"))
        if theirs:  # never write (and later replace model/ and tokenizer/) into a user's folder
            raise VerilensError(f"{out} is not a verilens train run (no spec.json) and holds "
                                f"{', '.join(theirs[:5])}{' ...' if len(theirs) > 5 else ''}; nothing there was "
                                "touched: choose a new or empty --out")
        _atomic_write_text(spec_file, json.dumps(asdict(spec), indent=1))
    return out


def read_checkpoint(ckpt: Path, device, keys) -> dict:
    """A checkpoint written by save_checkpoint, with at least `keys`. It is written
    atomically, so damage comes from outside (a full disk, a bad copy): never guess."""
    try:
        state = torch.load(ckpt, weights_only=False, map_location=device)
    except Exception as e:
        raise VerilensError(f"{ckpt} is damaged ({type(e).__name__}: {str(e)[:80]}); restore it, or delete it "
                            "to train from step 0") from e
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise VerilensError(f"{ckpt} is not a checkpoint of this run (it lacks {', '.join(missing)}); restore it, or "
                            "delete it to train from step 0")
    return state


def save_checkpoint(state: dict, ckpt: Path, log) -> None:
    _atomic_torch_save(state, ckpt)
    _atomic_write_text(ckpt.parent / "log.json", json.dumps(log))


def run_steps(spec, tokenizer, problems, pinned, opt, params, loss_fn, state_fn, ckpt: Path, step: int, log: list,
              until_step, checkpoint_every: int, device, progress: bool, desc: str) -> int:
    """The optimiser loop of every recipe: the batches of (seed, step) (so a resumed run sees
    what an uninterrupted one would), the learning-rate schedule, gradients clipped at 1.0,
    one log line a step, and a checkpoint (`state_fn()` + step, log, torch RNG) every
    `checkpoint_every` steps and at the last one. `loss_fn(step, ids, weights)`: the loss of
    one batch. Returns the step reached (`until_step` stops early)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=spec.steps, initial=step, desc=desc, disable=not progress)
    batches, group = None, -1
    t0 = time.time() - (log[-1]["seconds"] if log else 0.0)  # seconds count across resumes
    stop = spec.steps if until_step is None else min(until_step, spec.steps)
    while step < stop:
        if step // GROUP != group:
            group = step // GROUP
            batches = _group_batches(spec, problems, pinned, tokenizer, group)
        ids, _, weights = collate(batches[step % GROUP], tokenizer.eos_token_id)
        for g in opt.param_groups:
            g["lr"] = _lr(spec, step)
        loss = loss_fn(step, ids.to(device), weights.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        log.append({"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % checkpoint_every == 0 or step == stop:
            save_checkpoint({**state_fn(), "step": step, "log": log, "torch_rng": torch.get_rng_state()}, ckpt, log)
    bar.close()
    return step


def _group_batches(spec, problems, pinned, tokenizer, group: int):
    rng = random.Random(spec.seed * 1_000_003 + group)
    chosen = [problems[rng.randrange(len(problems))] for _ in range(GROUP * spec.batch_size)]
    drills = group * GROUP >= spec.drill_from and spec.p_drill + spec.p_pinned_drill > 0
    examples = spec_examples(tokenizer, spec, chosen, pinned, rng, drills)
    examples.sort(key=lambda e: len(e[0]))
    batches = [examples[i * spec.batch_size : (i + 1) * spec.batch_size] for i in range(GROUP)]
    rng.shuffle(batches)
    return batches


def _dropped_layers(spec, step) -> list[int]:
    """The layers LayerDrop skips on `step`: a stream of its own, so the batches are unchanged."""
    if spec.layer_drop <= 0:
        return []
    rng = random.Random(spec.seed * 1_000_003 + 7_919 * step + 104_729)
    return [l for l in range(spec.layer_drop_from, spec.num_hidden_layers) if rng.random() < spec.layer_drop]


def _skip_layer(module, args, output):
    return args[0]  # the layer's input hidden states: the layer acts as the identity


def _lr(spec, step):
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(out_dir, spec: TinySpec | None = None, checkpoint_every: int = 50, threads: int | None = None,
          progress: bool = True, until_step: int | None = None, device: str | None = None):
    """Train countdown-tiny into `out_dir` (resuming if a checkpoint is there); returns the
    path of the final model folder (`out_dir/model`), or None when `until_step` stopped
    the run early (a checkpoint is written there, so calling again resumes). `device`:
    cuda when present unless given; the batches are drawn on the CPU either way, so a
    GPU run sees the same data (its weights round differently)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    spec = spec or TinySpec()
    out = open_run(out_dir, spec)
    if threads:
        torch.set_num_threads(threads)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(spec.seed)
    problems = train_problems(spec)
    pinned = [p for p in problems if p.target % 10 == PINNED_DIGIT]
    tok_dir = out / "tokenizer"
    tokenizer = None
    if (tok_dir / "tokenizer.json").exists():
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        except Exception as e:  # a damaged file: the tokenizer is a pure function of the seed, so rebuild it
            warnings.warn(f"{tok_dir} cannot be read ({type(e).__name__}); training the tokenizer again")
    if tokenizer is None:
        rng = random.Random(spec.seed)
        corpus = [p + r for p, r, _ in training_texts(problems[: spec.tokenizer_corpus], rng)]
        tokenizer = train_tokenizer(corpus, spec.tokenizer_vocab)
        if len(tokenizer) > spec.vocab_size:
            raise VerilensError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {spec.vocab_size}")
        tmp_dir = tok_dir.with_name(tok_dir.name + ".tmp")  # the folder appears whole or not at all
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tokenizer.save_pretrained(tmp_dir)
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.replace(tmp_dir, tok_dir)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = Qwen2ForCausalLM(qwen2_config(spec, tokenizer)).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.98),
    )
    step, log = 0, []
    if ckpt.exists():
        state = read_checkpoint(ckpt, device, ("model", "optimizer", "step", "log", "torch_rng"))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
        torch.set_rng_state(state["torch_rng"].cpu())

    def loss_fn(step, ids, weights):
        # No attention mask: the padding is on the right, so under the causal mask no real
        # token sees it (and pads carry no loss); the maskless causal path of SDPA is faster.
        skips = [model.model.layers[l].register_forward_hook(_skip_layer) for l in _dropped_layers(spec, step)]
        try:
            return weighted_loss(model(input_ids=ids).logits, ids, weights)
        finally:
            for h in skips:
                h.remove()

    model.train()
    step = run_steps(spec, tokenizer, problems, pinned, opt, list(model.parameters()), loss_fn,
                     lambda: {"model": model.state_dict(), "optimizer": opt.state_dict()}, ckpt, step, log,
                     until_step, checkpoint_every, device, progress, "train countdown-tiny")
    if step < spec.steps:
        return None
    return save_model(model.cpu(), tokenizer, out / "model", spec)


def save_model(model, tokenizer, path, spec: TinySpec | None = None) -> Path:
    """Write the shipped form: fp16 safetensors + config + tokenizer (loads as fp32)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    # fp16 copies of the weights only: casting the model itself would also round its
    # buffers (RoPE inv_freq) and change the caller's model
    half = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    model.save_pretrained(tmp, state_dict=half, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if spec is not None:
        (tmp / "verilens_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
