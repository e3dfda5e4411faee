"""The training loop: Adam with warm-up, EMA, snapshots, exact resume, one process or many.

Every random number of step ``s`` comes from generators seeded with ``(seed, s)`` -- the draws shared by all
processes -- and ``(seed, s, rank)`` -- torch's global generator, which dropout uses. The data order is a
function of ``(seed, position)``. So the state to resume from is the weights, the EMA, the optimiser and the
step, and a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from rich.console import Console

from loracli.build import build_model
from loracli.data.order import DataOrder, micro_batch_offset
from loracli.errors import UserError
from loracli.folders import writing_to
from loracli.images import from_uint8, save_grid
from loracli.io.atomic import write_text
from loracli.io.checkpoint import save
from loracli.runtime import autocast, choose_precision
from loracli.train import distributed, report, setup
from loracli.train.objective import take
from loracli.train.state import CHECKPOINT_FILE, STATE_FILE, RunState, grid_name, publish, save_state, snapshot_name


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; nothing after the last good snapshot is saved."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    grid: Path | None
    plot: Path | None
    interrupted: bool


def stream_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one step (stream 0: shared draws; 1 + rank: per process)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Window:
    """What the loop accumulates between two progress reports."""

    start: int
    loss: torch.Tensor
    clock: float = field(default_factory=time.perf_counter)
    printed: float = field(default_factory=time.time)


class StopRequest:
    """The first Ctrl-C asks the loop to save and stop at the next check; a second one aborts at once, and so
    does the first while the state is already saved (``saved()``: only the snapshot's grid is left to draw)."""

    def __init__(self, notice: Callable[[], None] | None = None) -> None:
        self.requested = False
        self.notice = notice
        self.state_saved = False
        self._previous: Any = None

    @contextlib.contextmanager
    def saved(self) -> Iterator[None]:
        """Within this block Ctrl-C stops at once (KeyboardInterrupt): nothing would be lost."""
        self.state_saved = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self.state_saved = False

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or self.state_saved:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        if self.notice is not None:
            self.notice()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which saves before it stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Any, recipe: Mapping[str, Any], process: distributed.Process, micro_batch: int,
                start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    train = recipe["train"]
    workers = train["workers"]
    if workers is None:
        workers = min(8, max(1, (torch.multiprocessing.cpu_count() // process.world) - 1)) \
            if process.device.type == "cuda" else 0
    order = DataOrder(len(dataset), train["seed"], train["batch"], micro_batch, process.rank, process.world, start_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, sampler=order, num_workers=int(workers),
        pin_memory=process.device.type == "cuda", persistent_workers=bool(workers),
        prefetch_factor=4 if workers else None, worker_init_fn=_ignore_sigint if workers else None)
    return _one_sentence_errors(iter(loader))


def _one_sentence_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """A user mistake found in a DataLoader worker (an unreadable image) comes back as its own sentence:
    torch re-raises it with the worker's traceback as the message, whose last line is the sentence."""
    try:
        yield from batches
    except UserError as exc:
        text = str(exc)
        if "Traceback" not in text:
            raise
        sentence = text.strip().splitlines()[-1].partition("UserError: ")[2] or text.strip().splitlines()[-1]
        raise UserError(sentence) from None


def micro_batch_size(train: Mapping[str, Any], world: int) -> int:
    batch = int(train["batch"])
    if batch % world:
        raise UserError(f"The batch {batch} does not split evenly over {world} processes; pick a multiple of {world}.")
    per_process = batch // world
    micro = min(int(train["batch_gpu"] or per_process), per_process)
    if per_process % micro:
        raise UserError(f"--batch-gpu {micro} does not divide the per-process batch {per_process}.")
    return micro


def learning_rate(train: Mapping[str, Any], step: int) -> float:
    """EDM's linear warm-up: ``lr · min(nimg / rampup_nimg, 1)``, ``nimg`` counted before this step."""
    rampup = float(train["lr_rampup_kimg"]) * 1000
    factor = min(step * train["batch"] / rampup, 1.0) if rampup > 0 else 1.0
    return float(train["lr"]) * factor


class Trainer:
    """One run: set up from a recipe (and the saved state when resuming), then ``run()``."""

    def __init__(self, recipe: dict[str, Any], run_dir: Path, state: RunState | None = None,
                 console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.recipe, self.run_dir = recipe, run_dir
        self.process = distributed.start(recipe["train"]["device"])
        try:
            self._set_up(state)
        except BaseException:
            self.close()
            raise

    def _set_up(self, state: RunState | None) -> None:
        recipe, train, device = self.recipe, self.recipe["train"], self.process.device
        self.dataset = setup.open_data(recipe, state.model_config if state else None)
        self.data_info = self.dataset.provenance()
        if state is not None:
            self.model = build_model(state.model_config)
            setup.check_data_fits(self.model, self.dataset)
        else:
            self.model = setup.build_network(recipe, self.dataset)
        self.objective = setup.make_objective(recipe, self.model)
        self.precision = choose_precision(train["precision"], device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.precision != "fp32"
            self.model.to(device, memory_format=torch.channels_last)
        self.trained = self._trained_parameters()
        self.optimizer = torch.optim.Adam(self.trained, lr=float(train["lr"]), betas=tuple(train["betas"]),
                                          eps=float(train["eps"]), fused=device.type == "cuda" or None)
        self.ema = setup.make_ema(recipe, self.model)
        self.step = 0
        if state is not None:
            state.restore(self.model, self.ema.model, self.optimizer)
            self.step = state.step
        if self.recipe["finetune"]:
            self.model.train_adapters_only()  # a frozen base: no dropout in it, only the adapters train
        else:
            self.model.train()
        self.ddp = None
        net: Any = self.model
        if self.process.distributed:
            net = self.ddp = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=setup.has_unused_inputs(self.model, self.objective))
        self.net = torch.compile(net) if train["compile"] else net
        self.micro_batch = micro_batch_size(train, self.process.world)
        self.rounds = train["batch"] // (self.micro_batch * self.process.world)
        self.generator = torch.Generator(device=device)
        self.grid_images = self._grid_images()
        self.tensorboard = None
        if train["log"] == "tensorboard" and self.process.is_main:
            self.tensorboard = report.TensorBoardLog(self.run_dir)  # refuses a missing package before any work
        self.metrics = report.MetricsLog(self.run_dir, state.step if state else None) if self.process.is_main else None
        existing = self.run_dir / CHECKPOINT_FILE
        self.last_checkpoint: Path | None = existing if state and existing.is_file() else None
        self.last_grid: Path | None = None
        self.last_plot: Path | None = None
        self.saved_step = self.step if state else -1

    def _grid_images(self) -> int:
        """The snapshot grid's size (report.grid_size); the sampler settings are checked here, before training."""
        from loracli.generate import choose_sampler

        options = self.recipe["sample"]
        if not options["images"]:
            return 0
        choice = choose_sampler(self.model, options["sampler"], options["steps"])
        images = report.grid_size(self.recipe, choice.evaluations(self.model))
        classes, _ = report.grid_classes(self.model.label_dim, images)
        return images if classes is None else len(classes)  # whole rows of classes: 60 of 64 for 10 classes

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter, or with ``finetune`` only the adapters (the base network is frozen)."""
        if not self.recipe["finetune"]:
            return list(self.model.parameters())
        trained = list(self.model.condition_parameters())
        if not trained:
            raise UserError("--finetune trains only the adapters, and this network has none; add --cond.")
        for p in self.model.base_parameters():
            p.requires_grad_(False)
        return trained

    # -- one optimiser step ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.process.device)()

    def class_vectors(self, labels: torch.Tensor) -> torch.Tensor | None:
        """One-hot class vectors on the device, as the ConditionedModel would make them from integers -- but
        without its range check, which reads the labels back to the host (a sync per step, and a graph break
        under --compile); ``setup.check_data_fits`` has already checked the data's classes."""
        if not self.model.label_dim:
            return None
        labels = labels.to(self.process.device, non_blocking=True).long()
        return torch.nn.functional.one_hot(labels, self.model.label_dim).to(torch.float32)

    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimiser step over the global batch; returns this process's summed display loss (on device)."""
        seed, step, device = self.recipe["train"]["seed"], self.step, self.process.device
        torch.manual_seed(stream_seed(seed, step, 1 + self.process.rank))
        self.generator.manual_seed(stream_seed(seed, step, 0))
        draws = self.objective.draw(self.recipe["train"]["batch"], self.generator, device)
        per_process = self.micro_batch * self.rounds
        total = torch.zeros((), device=device)
        self.optimizer.zero_grad(set_to_none=True)
        for round_ in range(self.rounds):
            images, labels = next(batches)
            images = from_uint8(images.to(device, non_blocking=True))
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            labels = self.class_vectors(labels)
            start = micro_batch_offset(self.process.rank, self.process.world, round_, self.micro_batch)
            last = round_ == self.rounds - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    loss = self.objective.loss(self.net, images, labels, take(draws, start, start + self.micro_batch))
                (loss.sum() / per_process).backward()
            total += loss.detach().sum()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.recipe["train"], step)
        for p in self.trained:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        self.optimizer.step()
        self.ema.update(self.model, step)
        self.step += 1
        return total * self.objective.display_scale

    # -- what is written ---------------------------------------------------------------------------------------
    def extra(self) -> dict[str, Any]:
        return {"data": self.data_info, "train": self.recipe, "kimg": self.step * self.recipe["train"]["batch"] / 1000}

    def snapshot(self, stop: StopRequest | None = None, grid: bool = True) -> None:
        """EMA checkpoint, training state, loss plot and sample grid for the current step (rank 0 writes).

        The grid comes last and only when ``grid``: an interrupted run saves and stops; with ``stop``, a Ctrl-C
        while the grid is drawn skips the grid (everything else is saved by then).
        """
        if self.process.is_main:
            self.status("saving")
            with writing_to(self.run_dir):
                path = save(self.ema.model, self.run_dir / snapshot_name(self.step), step=self.step, ema=True,
                            extra=self.extra())
                publish(path, self.run_dir / CHECKPOINT_FILE)
                save_state(self.run_dir / STATE_FILE, self.model, self.ema.model, self.optimizer, self.step,
                           self.recipe)
                self.last_checkpoint = self.run_dir / CHECKPOINT_FILE
                if self.metrics is not None and self.metrics.rows:
                    self.last_plot = report.plot_losses(self.metrics.rows, self.run_dir / report.PLOT_FILE,
                                                        f"{self.recipe['model']} {self.recipe['cond']}")
                if grid and self.grid_images:
                    try:
                        with stop.saved() if stop is not None else contextlib.nullcontext():
                            self.last_grid = self.sample_grid()
                    except KeyboardInterrupt:
                        self.console.print("[yellow]Stopped drawing the grid; the state is saved.[/]")
            self.status("train")
        self.saved_step = self.step
        distributed.barrier(self.process)

    def sample_grid(self) -> Path:
        from loracli.generate import sample

        options = self.recipe["sample"]
        classes, columns = report.grid_classes(self.model.label_dim, self.grid_images)
        seeds = range(len(classes) if classes is not None else self.grid_images)
        self.status(f"sampling grid ({len(seeds)} images)")
        images = sample(self.ema.model, seeds, class_labels=classes, steps=options["steps"], sampler=options["sampler"],
                        device=self.process.device)
        return save_grid(self.run_dir / grid_name(self.step), images, columns)

    def status(self, what: str) -> None:
        """Say what the run is doing: the progress bar's label, or a line when the output is not a terminal."""
        progress = getattr(self, "progress", None)
        if progress is None:
            return
        progress.update(self.task, description=what)
        if not self.console.is_terminal and what != "train":
            self.console.print(f"{what}...", highlight=False)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train to ``train.steps``, reporting every ``log_every`` steps and snapshotting on schedule."""
        train = self.recipe["train"]
        total_steps, batch = train["steps"], train["batch"]
        if self.process.is_main:
            with writing_to(self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_text(self.run_dir / "config.json", json.dumps(self.recipe, indent=2) + "\n")
        batches = make_loader(self.dataset, self.recipe, self.process, self.micro_batch, self.step)
        self.window = Window(self.step, torch.zeros((), device=self.process.device))
        bad = torch.zeros((), dtype=torch.bool, device=self.process.device)
        self.progress = progress = report.progress_bar(self.console) if self.process.is_main else None
        notice = (lambda: self.console.print("[yellow]Saving and stopping after this step (Ctrl-C again "
                                             "aborts)...[/]")) if self.process.is_main else None
        interrupted = False
        with StopRequest(notice) as stop, progress or contextlib.nullcontext():
            self.task = task = progress.add_task("train", total=total_steps, completed=self.step,
                                                 kimg=self.step * batch / 1000, loss="-",
                                                 speed="-") if progress else None
            while self.step < total_steps and not interrupted:
                loss = self.train_step(batches)
                self.window.loss += loss
                bad |= ~torch.isfinite(loss)
                due_snapshot = self.step % train["snapshot_every"] == 0 or self.step == total_steps
                if self.step % train["log_every"] and not due_snapshot:
                    continue
                if distributed.any_true(self.process, bool(bad.item())):
                    self.diverged(self.window.start)
                self.report(progress, task, due_snapshot)
                interrupted = distributed.any_true(self.process, stop.requested)
                if due_snapshot or interrupted:
                    self.snapshot(stop, grid=not interrupted)
                    interrupted = distributed.any_true(self.process, stop.requested)
                    self.window.clock = time.perf_counter()
            if self.saved_step != self.step:
                self.snapshot(stop, grid=not interrupted)
        return RunResult(self.run_dir, self.step, self.last_checkpoint, self.last_grid, self.last_plot, interrupted)

    def report(self, progress: Any, task: Any, due_snapshot: bool) -> None:
        """Close the reporting window: metrics line, progress bar (or a plain line in a log file)."""
        train, window = self.recipe["train"], self.window
        steps, batch = self.step - window.start, train["batch"]
        elapsed = time.perf_counter() - window.clock
        loss = distributed.total(self.process, window.loss).item() / (steps * batch)
        row = {"step": self.step, "kimg": self.step * batch / 1000, "loss": loss,
               "lr": learning_rate(train, self.step - 1), "img_per_s": steps * batch / max(elapsed, 1e-9),
               "time": time.time()}
        if self.metrics is not None:
            with writing_to(self.run_dir):
                self.metrics.append(row)
                if self.tensorboard is not None:
                    self.tensorboard.append(row)
        if progress is not None:
            speed = report.format_rate(row["img_per_s"])
            progress.update(task, completed=self.step, kimg=row["kimg"], loss=f"{loss:.4f}", speed=speed)
            if not self.console.is_terminal and (due_snapshot or row["time"] - window.printed >= 30):
                window.printed = row["time"]
                self.console.print(f"step {self.step}/{train['steps']}  kimg {row['kimg']:.1f}  loss {loss:.4f}  "
                                   f"{speed} img/s", highlight=False)
        window.loss.zero_()
        window.start, window.clock = self.step, time.perf_counter()

    def diverged(self, since: int) -> None:
        saved = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "nothing was saved"
        raise TrainingDiverged(f"The loss became NaN or infinite between steps {since} and {self.step}, so training "
                               f"stopped ({saved}); lower --lr or check the data.")

    def close(self) -> None:
        if getattr(self, "tensorboard", None) is not None:
            self.tensorboard.close()
        distributed.stop(self.process)
