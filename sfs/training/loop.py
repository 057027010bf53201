"""Train one pack: a batched toy model under a lean Lightning loop, then evaluate.

No Ray here: ``train_pack(pack, device)`` runs anywhere (tests call it directly). The
loop keeps per-step work on the device: losses for the curve go into a preallocated
tensor, and the host looks at them (one sync) only every ``log_every`` steps, to catch
models whose loss went NaN/inf.

At every log point but the last the loop offers a checkpoint of the pack's training state
(``checkpoint``: taken only when the caller asks for it), and ``train_pack(resume=...)``
goes on from one with the numbers of an uninterrupted run: parameters, AdamW's moments,
the schedule's position, every model's data-stream generator and the loss curve so far
are all in it (``sfs.core.checkpoints`` says why and where they are kept).

Run by hand:  python -c "from sfs.training.loop import demo; demo()"
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sfs.core import checkpoints
from sfs.core.metrics import frobenius_sq, n_represented
from sfs.core.results import ModelResult, PackResult
from sfs.core.spec import derive_seed, family
from sfs.plan import ModelSpec, Pack
from sfs.training import data as sfs_data
from sfs.training.models import PackedToyModel, family_class

log = logging.getLogger(__name__)

EVAL_CHUNK = 4096  # held-out samples per forward pass: bounds eval memory for wide models


def lr_factor(step: int, steps: int, schedule: str, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warmup, then
    constant or cosine from 1 to final_ratio at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_model(pack: Pack) -> PackedToyModel:
    """The packed model with every instance initialised from its own seed."""
    shape = pack.shape
    model = family_class(shape.family)(len(pack.models), shape.n_features, shape.width, shape.depth)
    for k, spec in enumerate(pack.models):
        generator = torch.Generator().manual_seed(derive_seed(spec.seed, "init"))
        model.init_instance(k, generator, spec.init, spec.bias_init_std)
    return model


def pack_tensors(pack: Pack) -> tuple[Tensor, Tensor, Tensor]:
    """Per-instance probabilities ``(inst, feat)``, importances ``(inst, feat)``, decays ``(inst,)``."""
    n = pack.shape.n_features
    probs = torch.stack([sfs_data.feature_probabilities(n, s.sparsity, s.feature_dist)
                         for s in pack.models])
    importance = torch.stack([sfs_data.feature_importance(n, s.importance) for s in pack.models])
    decays = torch.tensor([s.weight_decay for s in pack.models], dtype=torch.float64)
    return probs.float(), importance.float(), decays.float()


def weighted_mse(target: Tensor, out: Tensor, importance: Tensor) -> Tensor:
    """Importance-weighted MSE per instance, mean over batch and features (TMS reference).

    target, out: ``(instance, batch, feature)`` (target: ``sfs_data.task_target`` of the
    inputs, x itself for the autoencoders); importance ``(instance, feature)`` -> ``(instance,)``.
    """
    return (importance.unsqueeze(1) * (target - out).square()).mean(dim=(1, 2))


def _lightning():
    # Imported lazily: Lightning costs seconds to import, and planning/validation never needs it.
    warnings.filterwarnings("ignore", message=".*treespec.*")  # Lightning 2.6 on torch 2.13
    import lightning.pytorch as pl

    return pl


def make_module(pack: Pack, log_every: int,
                progress: Callable[[int, Callable[[], bytes] | None], None] | None = None,
                resume: dict | None = None):
    """The pack's LightningModule. progress: called at each log point with the steps done and,
    but at the last, a function that returns a checkpoint (``checkpoint``); resume: a
    checkpoint's training state (``_resume_state``) to go on from."""
    pl = _lightning()

    class PackModule(pl.LightningModule):
        """Manual optimisation: one AdamW over the pack, per-instance decoupled weight decay."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.pack = pack
            self.spec: ModelSpec = pack.shape
            self.task = family(pack.shape.family)  # signed inputs? target x or |x|?
            self.model = build_model(pack)
            probs, importance, decays = pack_tensors(pack)
            self.register_buffer("probs", probs)
            self.register_buffer("importance", importance)
            self.register_buffer("decays", decays.view(-1, 1, 1))  # (instance, 1, 1)
            self.has_decay = bool((decays != 0).any())
            self.has_signed_decay = bool((decays < 0).any())
            self.log_every = log_every
            steps = self.spec.steps
            self.curve_steps = [s for s in range(log_every, steps + 1, log_every)]
            if not self.curve_steps or self.curve_steps[-1] != steps:
                self.curve_steps.append(steps)
            self._chunks = self.chunks()
            self.sampler: sfs_data.PackedSampler | None = None
            self.curve: Tensor | None = None
            self.live = torch.ones(len(pack.models), dtype=torch.bool)  # host-side: not diverged
            self.steps_done = 0
            self.report_progress = progress  # called with the steps done at each log point
            self._resume = resume
            if resume is not None:  # the rest (optimizer, schedule, streams) once they exist
                self.model.load_state_dict(resume["model"])
                self.live = resume["live"].clone()
                self.steps_done = int(resume["steps_done"])

        def configure_optimizers(self):
            # Weight decay is applied by hand (per instance, on the feature matrices only):
            # AdamW's own is a scalar per parameter group and would also decay the bias.
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.spec.lr, weight_decay=0.0)
            spec = self.spec
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer,
                lambda step: lr_factor(step, spec.steps, spec.lr_schedule, spec.warmup_steps,
                                       spec.final_lr_ratio),
            )
            return [optimizer], [scheduler]

        def on_train_start(self) -> None:
            seeds = [derive_seed(s.seed, "data") for s in self.pack.models]
            self.sampler = sfs_data.PackedSampler(
                self.probs, seeds, self.spec.batch_size, self.spec.max_magnitude, self.device,
                signed=self.task.signed_inputs)
            self.curve = torch.full((len(self.curve_steps), len(self.pack.models)), float("nan"),
                                    device=self.device)
            self._live_device = self.live.to(self.device)
            if self._resume is not None:
                self.curve.copy_(self._resume["curve"])
                for generator, saved in zip(self.sampler.generators, self._resume["generators"]):
                    generator.set_state(saved)
                # AdamW's moments go to their parameters' device as they load
                self.optimizers().optimizer.load_state_dict(self._resume["optimizer"])
                self.lr_schedulers().load_state_dict(self._resume["scheduler"])
                self._resume = None  # (and its tensors freed)

        def first_chunk(self) -> int:
            """The first chunk still to train: after the ``steps_done`` of a resumed pack."""
            return sum(1 for _, end in self._chunks if end <= self.steps_done)

        def checkpoint(self) -> bytes:
            """The pack's training state now (at a log point), as a checkpoint."""
            state = {
                "steps_done": self.steps_done,
                "model": self.model.state_dict(),
                "optimizer": self.optimizers().optimizer.state_dict(),
                "scheduler": self.lr_schedulers().state_dict(),
                "generators": [generator.get_state() for generator in self.sampler.generators],
                "curve": self.curve.cpu(),  # (n_logs, instance)
                "live": self.live.clone(),
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            return checkpoints.encode(
                {"pack_id": self.pack.pack_id, "model_ids": [m.model_id for m in self.pack.models],
                 "steps_done": self.steps_done, "steps": self.spec.steps, "log_every": self.log_every},
                buffer.getvalue())

        def chunks(self) -> list[tuple[int, int]]:
            """Lightning's batches: the optimizer steps [start, end) between two log points.

            Tiny models make Lightning's per-batch bookkeeping (hooks, progress tracking,
            the LightningOptimizer wrapper) a large share of a step; one batch per log
            interval pays it once per interval instead of once per step (measured in
            benchmarks/README.md)."""
            return list(zip([0, *self.curve_steps[:-1]], self.curve_steps))

        def training_step(self, batch: int, batch_idx: int) -> None:
            optimizer = self.optimizers().optimizer  # the torch optimizer: no per-step wrapper
            scheduler = self.lr_schedulers()
            start, end = self._chunks[int(batch)]  # the chunk's index (a resumed pack skips some)
            for _ in range(start, end):
                x = self.sampler.sample()  # (instance, batch, feature)
                target = sfs_data.task_target(x, self.task.target)  # x, or |x| (abs_mlp)
                losses = weighted_mse(target, self.model(x), self.importance)  # (instance,)
                # Diverged instances are frozen out of the objective, so their NaNs never
                # reach an optimizer step again; the rest of the pack trains on unaffected.
                total = torch.where(self._live_device, losses, torch.zeros_like(losses)).sum()
                optimizer.zero_grad(set_to_none=True)
                # fp32 only (no precision plugin to route through): manual_backward would
                # add nothing but per-step overhead
                total.backward()
                if self.has_decay:
                    self._decay_weights(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            self.steps_done = end
            self._log_point(end, losses.detach())

        @torch.no_grad()
        def _decay_weights(self, lr: float) -> None:
            """Decoupled decay per instance (Liu et al. 2025) on each feature matrix (W, and
            W_out when untied; never biases or block weights): gamma >= 0 shrinks every row,
            W_i -= lr*gamma*W_i; gamma < 0 pulls rows toward unit norm,
            W_i -= lr*gamma*(1/||W_i|| - 1)*W_i."""
            for W in self.model.feature_matrices():  # (instance, feature, hidden)
                coef = self.decays  # (instance, 1, 1)
                if self.has_signed_decay:
                    inv_norm = 1.0 / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (inst, feat, 1)
                    coef = torch.where(coef >= 0, coef, coef * (inv_norm - 1.0))
                W.sub_(lr * coef * W)

        def _log_point(self, step: int, losses: Tensor) -> None:
            index = self.curve_steps.index(step)
            self.curve[index] = losses
            finite = torch.isfinite(losses).cpu()  # the one host sync per log interval
            newly_dead = self.live & ~finite
            if newly_dead.any():
                for k in newly_dead.nonzero().flatten().tolist():
                    log.warning("model %s diverged at step %d (loss %s); its pack-mates continue",
                                self.pack.models[k].model_id, step, losses[k].item())
                self.live &= finite
                self._live_device = self.live.to(self.device)
                if not self.live.any():
                    self.trainer.should_stop = True
            if self.report_progress is not None:  # no checkpoint at the end, or of a stopped pack
                going_on = step < self.spec.steps and not self.trainer.should_stop
                self.report_progress(step, self.checkpoint if going_on else None)

    return PackModule()


@torch.no_grad()
def evaluate(model: PackedToyModel, pack: Pack, probs: Tensor, importance: Tensor,
             batch: str = "eval") -> Tensor:
    """Loss of every instance on a fixed held-out batch, ``(instance,)`` on the CPU.

    batch: "eval", the reported loss's batch (``eval_seed``), or "validation", a second
    batch of the same size drawn from its own stream (``validation_seed``): learning rates
    are chosen on it, so the reported loss is never the one a choice was made on."""
    spec = pack.shape
    seed = spec.eval_seed if batch == "eval" else validation_seed(spec.eval_seed)
    task = family(spec.family)  # the same inputs and target as in training
    uniform = sfs_data.eval_uniform(spec.n_features, seed, spec.eval_samples)
    device = probs.device
    total = torch.zeros(len(pack.models), dtype=torch.float64, device=device)
    for start in range(0, spec.eval_samples, EVAL_CHUNK):
        chunk = uniform[start:start + EVAL_CHUNK].to(device).unsqueeze(0)  # (1, chunk, feat)
        x = sfs_data.sparse_features(chunk, probs.unsqueeze(1), spec.max_magnitude,
                                     task.signed_inputs)  # (inst, chunk, feat)
        target = sfs_data.task_target(x, task.target)
        per_sample = (importance.unsqueeze(1) * (target - model(x)).square()).mean(dim=2)
        total += per_sample.sum(dim=1, dtype=torch.float64)
    return (total / spec.eval_samples).cpu()


def validation_seed(eval_seed: int) -> int:
    """The seed of the validation batch: derived from the eval seed, so no spec field (and
    no model id) changes, and never equal to it."""
    return derive_seed(eval_seed, "validation")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*barebones=True.*")


def train_pack(pack: Pack, device: torch.device | str = "cpu", log_every: int = 100,
               start_as_nan: frozenset[str] = frozenset(),
               progress: Callable[[int, Callable[[], bytes] | None], None] | None = None,
               resume: bytes | None = None) -> PackResult:
    """Train every model of the pack together, evaluate each on the held-out batch.

    start_as_nan: ids of models whose weights start as NaN (fault injection, sfs.core.faults).
    progress: called at every log point (after the loss check) with the steps done and, but
    at the last, a function returning a checkpoint of the pack now (the worker's
    ``ProgressReports`` decides whether to tell the driver, and whether to take one).
    resume: a checkpoint of this pack (its models in this order) to go on from; one that
    does not fit is said and ignored (the pack trains from the start)."""
    pl = _lightning()
    _quiet_lightning()
    device = torch.device(device)
    started = time.perf_counter()
    state = _resume_state(pack, resume, log_every) if resume is not None else None
    resumed_from = int(state["steps_done"]) if state is not None else 0
    module = make_module(pack, log_every, progress, state)
    if state is None:
        with torch.no_grad():
            for k, spec in enumerate(pack.models):
                if spec.model_id in start_as_nan:
                    module.model.W[k].fill_(float("nan"))
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        max_steps=-1,  # one epoch over the chunks of steps (PackModule.chunks)
        max_epochs=1,
        barebones=True,  # no logger, checkpointing, progress bar or summaries: we log ourselves
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=False,
    )
    # One "batch" per chunk of optimizer steps between two log points, its index (a resumed
    # pack's start after its checkpoint); the data itself is drawn on the device in training_step.
    trainer.fit(module, train_dataloaders=range(module.first_chunk(), len(module._chunks)))
    module.to(device)
    losses = evaluate(module.model, pack, module.probs, module.importance)
    val_losses = evaluate(module.model, pack, module.probs, module.importance, batch="validation")
    W = module.model.W.detach().cpu().numpy().astype(np.float32)  # (instance, feature, hidden)
    b = module.model.b_final.detach().cpu().numpy().astype(np.float32)
    extra = {name: p.detach().cpu().numpy().astype(np.float32)  # (instance, ...)
             for name, p in module.model.extra_parameters().items()}
    curve = module.curve.cpu().numpy()  # (n_logs, instance)
    represented = n_represented(W)
    frob = frobenius_sq(W)
    results = []
    for k, spec in enumerate(pack.models):
        loss = float(losses[k])
        finite = bool(module.live[k]) and math.isfinite(loss) and bool(np.isfinite(W[k]).all())
        logged = curve[: _n_logged(module.curve_steps, module.steps_done), k]
        results.append(ModelResult(
            model_id=spec.model_id, W=W[k], b=b[k], loss=loss,
            train_loss=float(logged[-1]) if len(logged) else float("nan"),
            curve=curve[:, k], status="ok" if finite else "diverged", val_loss=float(val_losses[k]),
            n_represented=int(represented[k]), frobenius_sq=float(frob[k]),
            extra={name: array[k] for name, array in extra.items()},
        ))
    return PackResult(
        pack_id=pack.pack_id, models=results, curve_steps=np.asarray(module.curve_steps),
        device=str(device), wall_s=time.perf_counter() - started, steps_done=module.steps_done,
        resumed_from=resumed_from,
    )


def _resume_state(pack: Pack, blob: bytes, log_every: int) -> dict | None:
    """The training state of ``blob`` when it is a checkpoint of this pack, its models in
    this order, taken at a log point of this ``log_every`` before the last; else None, said."""
    try:
        head = checkpoints.header(blob)
        ids = [m.model_id for m in pack.models]
        if head["pack_id"] != pack.pack_id or head["model_ids"] != ids:
            raise ValueError("it is another pack's, or has its models in another order")
        steps, done = pack.shape.steps, head["steps_done"]
        if head["steps"] != steps or head.get("log_every") != log_every or not 0 < done < steps:
            raise ValueError(f"taken at step {done} of {head['steps']} with log_every="
                             f"{head.get('log_every')}, not a log point of this pack's {steps} "
                             f"steps with log_every={log_every}")
        state = torch.load(io.BytesIO(checkpoints.state(blob)), map_location="cpu", weights_only=True)
        if state["steps_done"] != done or len(state["generators"]) != len(ids):
            raise ValueError("its state does not match its header")
        # the parameters of this sfs's model of the pack (a family changed since cannot load them)
        shapes = {name: tuple(p.shape) for name, p in build_model(pack).state_dict().items()}
        if shapes != {name: tuple(p.shape) for name, p in state["model"].items()}:
            raise ValueError("its parameters are not those of this pack's model")
    except Exception as error:  # noqa: BLE001 - a checkpoint is only ever a shortcut
        log.warning("pack %s: not resuming from its checkpoint (%s: %s); training it from the start",
                    pack.pack_id, type(error).__name__, error)
        return None
    log.info("pack %s: resuming from its checkpoint at step %d of %d", pack.pack_id, done, steps)
    return state


def _n_logged(curve_steps: list[int], steps_done: int) -> int:
    return sum(1 for s in curve_steps if s <= steps_done)


def demo() -> None:
    """Train the TMS n=5, m=2 sparsity curve on the CPU and print what it learned."""
    from sfs.plan import ModelSpec

    logging.basicConfig(level=logging.INFO)
    specs = tuple(
        ModelSpec("relu_output", 5, 2, 0, s, 0.9, "uniform", 0.0, 0, 5000, 1024, 1e-3, "constant",
                  0, 0.05, 1.0, "xavier_normal", 0.0, 1_000_003, 16384)
        for s in (0.0, 0.7, 0.9, 0.97)
    )
    result = train_pack(Pack("demo", specs))
    for spec, model in zip(specs, result.models):
        log.info("S=%.2f loss=%.5f represented=%d", spec.sparsity, model.loss, model.n_represented)
