"""The fine-tuning loop behind all four recipes (full or LoRA, one device or FSDP2 over N ranks).

A recipe file picks the variant with two class attributes; everything else (what to build,
how long to train, where to save) comes from the YAML config through config.instantiate.
This module is the loop itself; its parts live beside it: the settings (training/_settings.py), the model
(_model_setup.py), the batches (_batches.py), the skips (_skips.py), saving (_checkpoint.py), and
stopping on SIGTERM/SIGINT (_signals.py).
"""

import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import training, utils

from qwenvl_data.datasets._stats import SkipReport
from qwenvl_data.models import check_builder_fits_checkpoint, family_of_model
from qwenvl_data.training._batches import build_batches, build_training_dataset
from qwenvl_data.training._checkpoint import TrainingCheckpointer
from qwenvl_data.training._config import build
from qwenvl_data.training._data import move_to_device
from qwenvl_data.training._distributed import all_reduce_sum, destroy_distributed, init_distributed, rank_and_world
from qwenvl_data.training._eval import accuracy_line, answer_accuracy, answer_examples, example_lines
from qwenvl_data.training._lora import save_adapter
from qwenvl_data.training._loss import check_loss_contract, output_loss, trained_rows
from qwenvl_data.training._model_setup import ModelPlan, build_model
from qwenvl_data.training._nonfinite import (
    NonFiniteLossError,
    check_weights_finite,
    nonfinite_message,
    nonfinite_steps_note,
    scale_and_clip_gradients,
)
from qwenvl_data.training._numerics import numerics_settings, resume_numerics_note
from qwenvl_data.training._fingerprint import run_fingerprint
from qwenvl_data.training._output_lock import OutputDirLock
from qwenvl_data.training._resume import restore_training_state
from qwenvl_data.training._periodic import (
    PeriodicSchedule,
    hf_step_dir,
    prune_hf_step_dirs,
)
from qwenvl_data.training._plot import plot_history, write_metrics
from qwenvl_data.training._position_rule import check_transform_for_model, collator_for_model
from qwenvl_data.training._progress import TrainingProgress, say
from qwenvl_data.training._settings import RecipeSettings
from qwenvl_data.training._refusal import RunRefused, exit_refused
from qwenvl_data.training._signals import RunStopped, StopRequest
from qwenvl_data.training._skips import SkipLedger
from qwenvl_data.training._watchdog import ReadWatchdog


class FinetuneRecipe:
    """Fine-tunes a Qwen2.5-VL model on a chat dataset; subclasses set `distributed` and `lora`.

    Args:
        cfg: the merged YAML + command-line config (see configs/ for every key).
    """

    distributed: bool = False
    lora: bool = False

    def __init__(self, cfg: DictConfig, stop_request: StopRequest | None = None) -> None:
        self.metric_logger = self.output_lock = None  # cleanup() runs even when __init__ or setup() fails
        self.stop_request = stop_request or StopRequest()  # run_recipe installs it: SIGTERM/SIGINT stop cleanly
        self.settings = settings = RecipeSettings.from_config(cfg, type(self).__name__, lora=self.lora)
        self.device = utils.get_device(settings.device)
        if self.distributed:
            init_distributed(self.device, settings.collective_timeout_s)
        self.rank, self.world_size = rank_and_world()
        self.read_watchdog = ReadWatchdog(settings.data_timeout_s, self.rank, self.world_size, settings.num_workers)
        self.is_main = self.rank == 0
        self.dtype = training.get_dtype(settings.dtype, device=self.device)
        self.skips = SkipLedger(settings.max_skip_fraction, announce=self.is_main)  # restarts said once, by rank 0
        self.periodic = PeriodicSchedule(settings.eval_every_n_steps, settings.save_hf_every_n_steps,
                                         settings.keep_last_n_hf)  # fmt: skip
        self.output_dir = Path(settings.output_dir)

    # ---- setup --------------------------------------------------------------------------------
    def setup(self, cfg: DictConfig) -> None:
        """Build data, model, optimizer, schedule and logging; restore a saved state if asked."""
        self.cfg, settings = cfg, self.settings
        self.output_lock = OutputDirLock(self.output_dir) if self.is_main else None  # before building anything
        _seed_everything(settings.seed)
        self.transform = build(cfg, "tokenizer")
        self.collate_fn = build(cfg, "collate_fn")
        self.loss_fn = build(cfg, "loss")
        check_loss_contract(self.loss_fn, cfg.loss._component_)
        dataset, packed_buffer_size = build_training_dataset(cfg, self.transform, settings)
        self.eval_dataset = build(cfg, "eval_dataset", self.transform) if settings.eval_dataset else None
        if self.periodic.eval_every is not None and self.eval_dataset is None:
            raise ValueError(f"{type(self).__name__}: `eval_every_n_steps` needs an `eval_dataset` to validate on")
        self.checkpointer: TrainingCheckpointer = build(cfg, "checkpointer")
        self.checkpointer.transform = self.transform  # HF directories get the run's tokenizer and pixel budgets
        check_builder_fits_checkpoint(cfg.model._component_, self.checkpointer.checkpoint_dir)
        self.checkpointer.fingerprint = run_fingerprint(cfg, self.world_size)  # what its states depend on
        plan = ModelPlan(type(self).__name__, self.lora, self.distributed, self.device, self.dtype)
        self.model = build_model(cfg, settings, self.checkpointer, plan)
        check_transform_for_model(self.transform, self.model)  # one family's processing per run
        self.collate_fn = collator_for_model(self.collate_fn, self.model)  # one video position rule per run
        self.optimizer = build(cfg, "optimizer", [p for p in self.model.parameters() if p.requires_grad])
        self.batches = build_batches(dataset, packed_buffer_size, transform=self.transform, collate_fn=self.collate_fn,
                                     settings=settings, ledger=self.skips,
                                     position_rule=family_of_model(self.model).position_rule)  # fmt: skip
        self.steps_per_epoch = self.batches.planned_steps(settings.gradient_accumulation_steps,
                                                          settings.max_steps_per_epoch)  # fmt: skip
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.lr_scheduler = (
            build(cfg, "lr_scheduler", self.optimizer, num_training_steps=self.total_steps)
            if settings.lr_scheduler else None
        )  # fmt: skip
        self.metric_logger = build(cfg, "metric_logger") if settings.metric_logger and self.is_main else None
        self.epoch = self.steps_in_epoch = self.global_step = 0
        self.history: dict[str, Any] = {"steps": [], "loss": [], "tokens_per_s": [], "samples_per_s": [],
                                        "skipped_by_epoch": [], "nonfinite_steps_skipped": []}  # fmt: skip
        self.train_seconds = 0.0
        self._resume_dataloader_state = None
        if settings.resume_from_checkpoint:
            self._resume(settings.resume_from_checkpoint)
        else:
            self.history["eval_before"] = self._evaluate("before training")

    def _resume(self, resume: bool | str) -> None:
        path, state = restore_training_state(self.checkpointer, resume, self.model, self.optimizer, self.lr_scheduler,
                                             list(self.settings.resume_overrides), announce=self.is_main)
        self.epoch, self.steps_in_epoch, self.global_step = state["epoch"], state["steps_in_epoch"], state["global_step"]
        self.history, self.train_seconds = state["history"], state["train_seconds"]
        self.skips.load_state_dict(state["skips"])
        if self.steps_in_epoch >= self.steps_per_epoch:
            self.epoch, self.steps_in_epoch = self.epoch + 1, 0
        if self.steps_in_epoch or self.batches.stream:  # a stream reads on across epochs
            self._resume_dataloader_state = state["dataloader"]
        if self.is_main:
            print(f"resumed from {path} at step {self.global_step} (epoch {self.epoch})", flush=True)
            if self.global_step >= self.total_steps:
                print(f"the state is the end of the run ({self.total_steps} steps): nothing left to train; "
                      "writing the final outputs again (raise `epochs` to train on)", flush=True)
            note = resume_numerics_note(state.get("numerics"), numerics_settings(self.device))
            if note is not None:
                print(note, flush=True)

    def _evaluate(self, when: str) -> dict[str, float] | None:
        if self.eval_dataset is None:
            return None
        result = answer_accuracy(
            self.model, self.eval_dataset, self.collate_fn, batch_size=self.settings.eval_batch_size,
            device=self.device, dtype=self.dtype, max_samples=self.settings.eval_max_samples,
        )  # fmt: skip
        if self.is_main:
            say(accuracy_line(result, when))
        return result

    # ---- training -----------------------------------------------------------------------------
    def train(self) -> None:
        """Run the remaining optimizer steps, saving resumable states as configured.

        Raises:
            RunStopped: SIGTERM or SIGINT arrived (see training/_signals.py); the state was saved and reported.
        """
        progress = TrainingProgress(self.total_steps, self.global_step, enabled=self.is_main)
        self.model.train()
        stopped_early = False
        try:
            signum = self.stop_request.agreed(self.device, self.world_size)  # one that came while setting up
            if signum is not None:
                self._stop_on_signal(signum, saved=None)
            while self.epoch < self.settings.epochs and not stopped_early:
                stopped_early = self._train_epoch(progress)
                if not stopped_early:
                    self.epoch, self.steps_in_epoch = self.epoch + 1, 0
        finally:  # the bar ends before any error is printed, so the error stays the last line
            progress.close()
        self.stopped_early = stopped_early

    def _train_epoch(self, progress: TrainingProgress) -> bool:
        """The current epoch's remaining steps; True when ``stop_after_step`` ended the run in it.

        An epoch ends after its planned steps, or earlier when skipped records made its records run out
        (see ``RefillingBatches``); an epoch with no usable record at all stops the run.
        """
        if self.steps_in_epoch == 0:
            self.skips.start_epoch()
        self.batches.start_epoch(self.epoch, self._resume_dataloader_state)
        self._resume_dataloader_state = None
        while self.steps_in_epoch < self.steps_per_epoch:
            started = time.perf_counter()
            step = self._optimizer_step()
            self.train_seconds += time.perf_counter() - started
            if step is None:  # this epoch's records ran out (skips made it shorter than planned)
                if self.steps_in_epoch == 0:
                    raise self.skips.no_usable_record(self.epoch)
                self.steps_in_epoch = self.steps_per_epoch  # the epoch is complete: a resume starts the next
                self._report_epoch_skips(progress)
                self.save_checkpoint()
                return False
            self.global_step += 1
            self.steps_in_epoch += 1
            self._record(progress, *step)
            self._periodic_work()
            stop_after = self.settings.stop_after_step
            stopped_early = stop_after is not None and self.global_step >= stop_after
            end_of_epoch = self.steps_in_epoch == self.steps_per_epoch
            if end_of_epoch:  # before the save, so a resumed run's history holds this report too
                self._report_epoch_skips(progress)
            saved = None
            if stopped_early or end_of_epoch or self.checkpointer.due(self.global_step):
                saved = self.save_checkpoint()
            signum = self.stop_request.agreed(self.device, self.world_size)  # also one that came during the save
            if signum is not None:
                self._stop_on_signal(signum, saved or self.save_checkpoint())
            if stopped_early:
                return True
        return False

    def _stop_on_signal(self, signum: int, saved: Path | None) -> None:
        """End the run (``RunStopped``) with where it stopped and how to resume it (``run_recipe`` prints that
        last, after the progress bar closed, so that it is the log's last line)."""
        message = None
        if self.is_main:
            name, latest = signal.Signals(signum).name, saved or self.checkpointer.latest_state()
            where = f"resumable state of step {self.global_step}: {latest}" if latest else "nothing saved yet"
            how = ("run the same command again with resume_from_checkpoint=true" if latest
                   else "run the same command again")  # fmt: skip
            message = (f"stopped by {name} after step {self.global_step} ({where}); to continue, {how} "
                       f"(output_dir={self.output_dir})")  # fmt: skip
        raise RunStopped(signum, message)

    def _report_epoch_skips(self, progress: TrainingProgress) -> None:
        """Console, metrics.json and the metric logger: the epoch's skips by cause with example record ids."""
        report = self.skips.report("epoch")
        self.history["skipped_by_epoch"].append({"epoch": self.epoch, **report.as_dict()})
        if self.is_main:
            for line in [f"epoch {self.epoch}: {report.describe()}", *report.source_lines()]:
                progress.write(line)
            if self.metric_logger is not None:
                self.metric_logger.log_dict(report.scalars(), step=self.global_step)
            write_metrics(self.output_dir / "metrics.json", self._metrics(final_dir=None))

    def _optimizer_step(self) -> tuple[float, int, int] | None:
        """Accumulate gradients over micro-batches, normalise by the global token count, step.

        Every rank takes the same number of micro-batches: the step stops accumulating as soon as one rank's
        records run out (a step with fewer micro-batches is still exact: it divides by its own token count).

        Returns:
            (mean loss per trained token over the global batch, input tokens, samples) over all ranks, or
            None when the epoch's records ran out before this step's first micro-batch.

        Raises:
            NonFiniteLossError: the loss or gradient norm is NaN/inf and ``on_nonfinite_loss`` is ``stop``.
        """
        loss_sum = torch.zeros((), device=self.device)
        tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        counts = torch.zeros(2, dtype=torch.int64, device=self.device)  # samples, input tokens
        micro_batches = 0
        for _ in range(self.settings.gradient_accumulation_steps):
            with self.read_watchdog.watch():
                batch = self.batches.next_batch()
            if not self._every_rank_has(batch):
                break
            batch = move_to_device(batch, self.device, self.dtype)
            micro_batches += 1
            rows, targets = trained_rows(batch["labels"])
            with output_loss(self.model, rows, targets, self.loss_fn):
                micro_loss = self.model(**batch)
            micro_loss.backward()
            loss_sum += micro_loss.detach()
            tokens += targets.numel()
            samples, input_tokens = self.batches.sizes(batch)
            counts[0] += samples
            counts[1] += input_tokens
            del micro_loss
        if micro_batches == 0:
            return None
        global_tokens = all_reduce_sum(tokens)
        # FSDP2 averages gradients over ranks; scaling by world/tokens turns that into sum/tokens.
        scale = self.world_size / max(int(global_tokens), 1)
        grad_norm = scale_and_clip_gradients(self.model, scale, self.settings.clip_grad_norm)
        global_loss = float(all_reduce_sum(loss_sum)) / max(int(global_tokens), 1)
        problem = nonfinite_message(self.global_step + 1, global_loss, grad_norm)
        if problem is not None and self.settings.on_nonfinite_loss != "skip_step":
            raise NonFiniteLossError(problem)
        if problem is None:
            self.optimizer.step()
        else:
            self.history["nonfinite_steps_skipped"].append(self.global_step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        samples, input_tokens = all_reduce_sum(counts).tolist()
        return global_loss, input_tokens, samples

    def _every_rank_has(self, batch: dict[str, torch.Tensor] | None) -> bool:
        """Whether every rank got a micro-batch (the forward pass is collective under FSDP2)."""
        if self.world_size == 1:
            return batch is not None
        have = torch.tensor(int(batch is not None), device=self.device)
        return int(all_reduce_sum(have)) == self.world_size

    def _record(self, progress: TrainingProgress, loss: float, tokens: int, samples: int) -> None:
        figures = progress.step(loss, tokens, samples, skipped=self.skips.skipped_in_run,
                                nonfinite=len(self.history["nonfinite_steps_skipped"]))
        self.history["steps"].append(self.global_step)
        self.history["loss"].append(loss)
        self.history["tokens_per_s"].append(figures["tokens_per_s"])
        self.history["samples_per_s"].append(figures["samples_per_s"])
        if self.metric_logger is not None and self.global_step % self.settings.log_every_n_steps == 0:
            lr = self.optimizer.param_groups[0]["lr"]
            skipped = {"skipped_records": float(self.skips.skipped_in_run)}
            self.metric_logger.log_dict({"loss": loss, "lr": lr, **figures, **skipped}, step=self.global_step)

    def _periodic_work(self) -> None:
        """Validation and intermediate HF directories due after this step (see training/_periodic.py)."""
        step = self.global_step
        if self.periodic.eval_due(step):
            result = self._evaluate(f"at step {step}")
            if result is not None:
                record = {"step": step, "loss": result["loss"], "accuracy": result["accuracy"]}
                self.history.setdefault("eval", []).append(record)
                if self.metric_logger is not None:
                    self.metric_logger.log_dict({"eval_loss": record["loss"], "eval_accuracy": record["accuracy"]},
                                                step=step)  # fmt: skip
        if self.periodic.save_hf_due(step):
            full = self.checkpointer.full_state_dict(self.model) if self.lora else None
            out_dir = self._save_hf(hf_step_dir(self.checkpointer.final_dir, step), full)
            if self.is_main:
                prune_hf_step_dirs(self.checkpointer.final_dir, self.periodic.keep_last_n_hf)
                say(f"HF checkpoint at step {step}: {out_dir}")

    # ---- saving -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Atomically save everything needed to continue this run bit-identically."""
        trainer_state = {
            "epoch": self.epoch, "steps_in_epoch": self.steps_in_epoch, "global_step": self.global_step,
            "dataloader": self.batches.state_dict(), "history": self.history, "train_seconds": self.train_seconds,
            "skips": self.skips.state_dict(), "numerics": numerics_settings(self.device),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
        }  # fmt: skip
        return self.checkpointer.save_state(self.global_step, self.model, self.optimizer, trainer_state)

    def finish(self) -> Path | None:
        """After training: evaluate, write the HF weights, metrics and loss plot; print where they are."""
        if self.stopped_early:
            if self.is_main:
                print(f"stopped after step {self.global_step} (stop_after_step); resume with "
                      f"resume_from_checkpoint=true output_dir={self.output_dir}", flush=True)  # fmt: skip
            return None
        self.history["eval_after"] = self._evaluate("after training")
        self._show_examples()
        run_skips = self.skips.report("run")
        self.history["skipped_in_run"] = run_skips.as_dict()
        check_weights_finite(self.model)
        final_dir = self._save_final_weights()
        if self.is_main:
            self._write_report(final_dir, run_skips)
        return final_dir

    def _show_examples(self) -> None:
        """Print the generated answers to the first `eval_examples` held-out questions (one process only: the
        KV-cached generation runs on an unsharded model)."""
        count = self.settings.eval_examples
        if self.eval_dataset is None or not count or self.world_size > 1:
            return
        self.history["examples"] = answer_examples(self.model, self.eval_dataset, self.collate_fn,
                                                   self.transform.decode, count=count, device=self.device,
                                                   dtype=self.dtype)  # fmt: skip
        for line in example_lines(self.history["examples"]):
            say(line)

    def _save_final_weights(self) -> Path | None:
        """HF weights (LoRA: merged by save_hf_model) and, for LoRA, the adapter on its own (PEFT's format)."""
        if not self.lora:
            return self._save_hf()
        full = self.checkpointer.full_state_dict(self.model)
        if self.is_main:
            base = str(self.checkpointer.checkpoint_dir) if self.checkpointer.checkpoint_dir else None
            adapter_dir = save_adapter(self.model, full, self.output_dir / "adapter", base_model=base)
            # From scratch there is no base checkpoint to apply the adapter to; hf_model/ has it merged already.
            note = "" if base else " (its base is this run's random init, not saved: use the merged hf_model/)"
            print(f"LoRA adapter: {adapter_dir}{note}", flush=True)
        if not self.settings.save_merged_weights:
            return self.output_dir / "adapter"
        return self._save_hf(state_dict=full)

    def _save_hf(self, out_dir: Path | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> Path | None:
        """A complete HF directory (LoRA: ``state_dict`` holds the adapters, merged on save); collective."""
        build_model = lambda: build(self.cfg, "model")  # noqa: E731 (rebuilt on rank 0 when sharded)
        return self.checkpointer.save_hf(self.model, build_model, out_dir=out_dir, state_dict=state_dict)

    def _metrics(self, final_dir: Path | None) -> dict[str, Any]:
        """metrics.json's content so far: steps, losses, accuracies, skipped records, config."""
        before, after = self.history.get("eval_before"), self.history.get("eval_after")
        return {
            "steps": self.global_step, "world_size": self.world_size, "train_seconds": self.train_seconds,
            "final_loss": self.history["loss"][-1] if self.history["loss"] else None,
            "accuracy_before": before["accuracy"] if before else None,
            "accuracy_after": after["accuracy"] if after else None,
            "accuracy_chance": after["chance"] if after else None,
            "skipped": self.history.get("skipped_in_run"),
            "nonfinite_steps_skipped": len(self.history["nonfinite_steps_skipped"]),
            "history": self.history, "hf_checkpoint": str(final_dir) if final_dir else None,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }  # fmt: skip

    def _write_report(self, final_dir: Path | None, run_skips: SkipReport) -> None:
        before, after = self.history.get("eval_before"), self.history.get("eval_after")
        metrics_path = write_metrics(self.output_dir / "metrics.json", self._metrics(final_dir))
        title = f"{type(self).__name__}: {self.global_step} steps"
        if before and after:
            title += f", held-out accuracy {before['accuracy']:.0%} -> {after['accuracy']:.0%}"
        plot_path = plot_history(self.output_dir / "loss.png", self.history, title)
        nonfinite = nonfinite_steps_note(self.history["nonfinite_steps_skipped"])
        print(f"trained {self.global_step} steps{nonfinite} in {self.train_seconds:.1f}s; {run_skips.describe()}; "
              f"metrics: {metrics_path}; loss plot: {plot_path}", flush=True)  # fmt: skip
        for line in run_skips.source_lines():
            print(line, flush=True)
        adapter_only = self.lora and not self.settings.save_merged_weights
        print(f"{'LoRA adapter (PEFT format)' if adapter_only else 'HF checkpoint'}: {final_dir}", flush=True)

    def cleanup(self) -> None:
        self.batches = None  # its DataLoader workers exit now, not when the interpreter terminates them
        if getattr(self, "metric_logger", None) is not None:  # None too when setup failed before building it
            self.metric_logger.close()
        if getattr(self, "output_lock", None) is not None:
            self.output_lock.release()
        destroy_distributed()


def _seed_everything(seed: int) -> None:
    """Same seed on every rank: identical model init, so sharding a random init is consistent."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_recipe(recipe_class: type[FinetuneRecipe], cfg: DictConfig) -> None:
    """setup -> train -> finish -> cleanup, the sequence every fine-tuning recipe_main runs.

    SIGTERM and SIGINT stop it cleanly (training/_signals.py): the current step finishes, a resumable state
    is saved, and the process exits with 128 + the signal number (143, 130) without a traceback. A refusal
    (``RunRefused``: bad config, busy output_dir, resume mismatch, too many skips) is printed as the last line,
    without a traceback, and exits with 1.
    """
    stop_request, stopped = StopRequest(), None
    with stop_request.installed():
        recipe = None
        try:
            recipe = recipe_class(cfg, stop_request)
            recipe.setup(cfg)
            recipe.train()
            recipe.finish()
        except RunStopped as stop:
            stopped = stop
        except RunRefused as refusal:
            _cleanup_quietly(recipe)
            exit_refused(refusal)
        except BaseException:
            _cleanup_quietly(recipe)  # the run's own error must stay the last thing printed
            raise
        recipe.cleanup()  # still catching: torchrun signals the ranks again once the first one exits
    if stopped is not None:
        if stopped.message is not None:
            print(stopped.message, flush=True)
        raise SystemExit(stopped.exit_code)


def _cleanup_quietly(recipe: FinetuneRecipe | None) -> None:
    if recipe is None:  # its constructor refused the config: nothing was set up
        return
    try:
        recipe.cleanup()
    except Exception as error:  # reported, but never raised over the error that ended the run
        print(f"(cleanup after the error below also failed: {type(error).__name__}: {error})", file=sys.stderr)

