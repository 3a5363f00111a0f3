"""The fine-tuning loop behind all four recipes (full or LoRA, one device or FSDP2 over N ranks).

A recipe file picks the variant with two class attributes; everything else (what to build,
how long to train, where to save) comes from the YAML config through config.instantiate.
"""

import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
)
from torchtune import training, utils

from qwenvl_data.models import initialize_dora_magnitudes
from qwenvl_data.training._checkpoint import TrainingCheckpointer
from qwenvl_data.training._config import accepts_keyword, build, check_config_keys
from qwenvl_data.training._data import RefillingBatches, build_dataset, move_to_device
from qwenvl_data.training._distributed import (
    all_reduce_sum,
    apply_activation_checkpointing,
    compile_blocks,
    destroy_distributed,
    init_distributed,
    rank_and_world,
    shard_model,
)
from qwenvl_data.training._eval import accuracy_line, answer_accuracy, answer_examples, example_lines
from qwenvl_data.training._lora import has_adapters, save_adapter, train_adapters_only
from qwenvl_data.training._loss import check_loss_contract, output_loss, trained_rows
from qwenvl_data.training._nonfinite import (
    NonFiniteLossError,
    check_weights_finite,
    gradient_norm,
    nonfinite_message,
)
from qwenvl_data.training._packed_data import (
    build_packed_dataloader,
    split_packing_options,
)
from qwenvl_data.training._periodic import (
    PeriodicSchedule,
    hf_step_dir,
    prune_hf_step_dirs,
)
from qwenvl_data.training._plot import plot_history, write_metrics
from qwenvl_data.training._progress import TrainingProgress, say
from qwenvl_data.training._settings import VALUE_RULES
from qwenvl_data.training._skips import SkipLedger, describe, skipped_scalars

REQUIRED_KEYS = (
    "output_dir", "model", "tokenizer", "dataset", "collate_fn", "optimizer", "loss", "checkpointer",
    "batch_size", "epochs",
)  # fmt: skip
OPTIONAL_KEYS = (
    "seed", "shuffle", "max_steps_per_epoch", "gradient_accumulation_steps", "resume_from_checkpoint",
    "device", "dtype", "lr_scheduler", "metric_logger", "eval_dataset", "eval_batch_size", "eval_max_samples",
    "log_every_n_steps", "clip_grad_norm", "num_workers", "enable_activation_checkpointing", "compile",
    "freeze_vision_tower", "freeze_merger", "stop_after_step", "fsdp_reshard_after_forward", "init_std",
    "max_skip_fraction", "on_nonfinite_loss", "eval_every_n_steps", "save_hf_every_n_steps", "keep_last_n_hf",
    "eval_examples",
)  # fmt: skip
LORA_KEYS = ("save_merged_weights",)
VISION_TOWER_PREFIX = "visual."
MERGER_PREFIX = "visual.merger."


class FinetuneRecipe:
    """Fine-tunes a Qwen2.5-VL model on a chat dataset; subclasses set `distributed` and `lora`.

    Args:
        cfg: the merged YAML + command-line config (see configs/ for every key).
    """

    distributed: bool = False
    lora: bool = False

    def __init__(self, cfg: DictConfig) -> None:
        self.metric_logger = None  # cleanup() runs even when __init__ or setup() fails
        name = type(self).__name__
        check_config_keys(cfg, name, REQUIRED_KEYS, OPTIONAL_KEYS + (LORA_KEYS if self.lora else ()), VALUE_RULES)
        self.device = utils.get_device(cfg.get("device", "cpu"))
        if self.distributed:
            init_distributed(self.device)
        self.rank, self.world_size = rank_and_world()
        self.is_main = self.rank == 0
        self.dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self.device)
        self.seed = int(cfg.get("seed", 0))
        self.epochs = int(cfg.epochs)
        self.batch_size = int(cfg.batch_size)
        self.grad_accum = int(cfg.get("gradient_accumulation_steps", 1))
        self.max_steps_per_epoch = cfg.get("max_steps_per_epoch")
        self.stop_after_step = cfg.get("stop_after_step")
        self.clip_grad_norm = cfg.get("clip_grad_norm")
        self.log_every = int(cfg.get("log_every_n_steps", 1))
        self.skip_nonfinite = cfg.get("on_nonfinite_loss", "stop") == "skip_step"
        self.skips = SkipLedger(float(cfg.get("max_skip_fraction", 0.01)))
        self.periodic = PeriodicSchedule.from_config(cfg, name)
        self.output_dir = Path(cfg.output_dir)

    # ---- setup --------------------------------------------------------------------------------
    def setup(self, cfg: DictConfig) -> None:
        """Build data, model, optimizer, schedule and logging; restore a saved state if asked."""
        self.cfg = cfg
        _seed_everything(self.seed)
        self.transform = build(cfg, "tokenizer")
        self.collate_fn = build(cfg, "collate_fn")
        self.loss_fn = build(cfg, "loss")
        check_loss_contract(self.loss_fn, cfg.loss._component_)
        dataset_cfg, self.packed_buffer_size = cfg.dataset, None
        if isinstance(cfg.dataset, DictConfig):
            dataset_cfg, self.packed_buffer_size = split_packing_options(cfg.dataset)
        self.packed = self.packed_buffer_size is not None
        shuffle = bool(cfg.get("shuffle", True))
        self.dataset = build_dataset(OmegaConf.create({"dataset": dataset_cfg}), self.transform, seed=self.seed,
                                     shuffle=shuffle)  # fmt: skip
        self.eval_dataset = build(cfg, "eval_dataset", self.transform) if cfg.get("eval_dataset") else None
        if self.periodic.eval_every is not None and self.eval_dataset is None:
            raise ValueError(f"{type(self).__name__}: `eval_every_n_steps` needs an `eval_dataset` to validate on")
        self.checkpointer: TrainingCheckpointer = build(cfg, "checkpointer")
        self.checkpointer.transform = self.transform  # HF directories get the run's tokenizer and pixel budgets
        self.model = self._build_model(cfg)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no trainable parameters: check freeze_vision_tower / freeze_merger / the LoRA settings")
        self.optimizer = build(cfg, "optimizer", trainable)
        if self.packed:
            self.batches, self.steps_per_epoch = build_packed_dataloader(
                self.dataset, self.transform, self.batch_size, buffer_size=self.packed_buffer_size,
                max_steps_per_epoch=self.max_steps_per_epoch, shuffle=shuffle, seed=self.seed,
                num_workers=int(cfg.get("num_workers", 0)), ledger=self.skips,
            )  # fmt: skip
        else:
            self.batches = RefillingBatches(
                self.dataset, self.collate_fn, self.batch_size, self.skips, shuffle=shuffle, seed=self.seed,
                num_workers=int(cfg.get("num_workers", 0)),
            )  # fmt: skip
            planned = self.batches.planned_batches
            if planned is None and not self.max_steps_per_epoch:
                raise ValueError("the dataset is a stream of unknown length (JSON Lines, JSON or tar shards, or a "
                                 "mixture): set `max_steps_per_epoch`")  # fmt: skip
            batches = (self.max_steps_per_epoch * self.grad_accum if planned is None else planned) // self.grad_accum
            if batches == 0:
                raise ValueError(
                    f"the dataset holds fewer than one step of {self.batch_size} x {self.grad_accum} x "
                    f"{self.world_size} ranks samples"
                )
            self.steps_per_epoch = min(batches, self.max_steps_per_epoch or batches)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.lr_scheduler = (
            build(cfg, "lr_scheduler", self.optimizer, num_training_steps=self.total_steps)
            if cfg.get("lr_scheduler") else None
        )  # fmt: skip
        self.metric_logger = build(cfg, "metric_logger") if cfg.get("metric_logger") and self.is_main else None
        self.epoch = self.steps_in_epoch = self.global_step = 0
        self.history: dict[str, Any] = {"steps": [], "loss": [], "tokens_per_s": [], "samples_per_s": [],
                                        "skipped_by_epoch": [], "nonfinite_steps_skipped": []}  # fmt: skip
        self.train_seconds = 0.0
        self._resume_dataloader_state = None
        resume = cfg.get("resume_from_checkpoint", False)
        if resume:
            self._resume(resume)
        else:
            self.history["eval_before"] = self._evaluate("before training")

    def _build_model(self, cfg: DictConfig) -> torch.nn.Module:
        pretrained = self.checkpointer.checkpoint_dir is not None
        if self.distributed and pretrained:
            return self._build_sharded_pretrained(cfg)
        with training.set_default_dtype(self.dtype), self.device:
            model = build(cfg, "model", **self._trained_in_full(cfg))
        self._check_adapters(model, cfg)
        if cfg.get("init_std") is not None:
            if pretrained:
                raise ValueError("`init_std` re-initializes a from-scratch model; it cannot be used with a checkpoint_dir")
            init_weights(model, float(cfg.init_std))
        self.checkpointer.load_pretrained(model, self.dtype, trainable_only_missing=self.lora)
        self._prepare(model, cfg)
        if self.distributed:
            shard_model(model, reshard_after_forward=bool(cfg.get("fsdp_reshard_after_forward", True)))
        return model

    def _build_sharded_pretrained(self, cfg: DictConfig) -> torch.nn.Module:
        """Build on the meta device, shard, then stream rank 0's checkpoint weights to every rank.

        Only rank 0 ever holds the full weights (on CPU), so a 72B model fits on a node.
        """
        with training.set_default_dtype(self.dtype), torch.device("meta"):
            model = build(cfg, "model", **self._trained_in_full(cfg))
        self._check_adapters(model, cfg)
        self._prepare(model, cfg)
        shard_model(model, reshard_after_forward=bool(cfg.get("fsdp_reshard_after_forward", True)))
        model.to_empty(device=self.device)
        for module in model.modules():  # what to_empty left uninitialized and no checkpoint holds
            if hasattr(module, "rope_init"):
                module.rope_init()
            if self.lora and hasattr(module, "initialize_parameters"):
                module.initialize_parameters()
        full = self.checkpointer.pretrained_state_dict(self.dtype) if self.is_main else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=not self.lora)
        set_model_state_dict(model, full, options=options)
        if self.lora and self.checkpointer.adapter_dir is None:
            initialize_dora_magnitudes(model)  # from the loaded weights (an adapter_dir brings its own)
        return model

    def _check_adapters(self, model: torch.nn.Module, cfg: DictConfig) -> None:
        """The model has LoRA/DoRA adapters exactly when this is a LoRA recipe (whatever the builder's name)."""
        adapted = has_adapters(model)
        if adapted != self.lora:
            raise ValueError(
                f"{type(self).__name__}: `model._component_` ({cfg.model._component_}) builds a model "
                f"{'with' if adapted else 'without'} LoRA/DoRA adapters: run it with a "
                f"{'lora' if adapted else 'full'}_finetune_* recipe"
            )

    def _trained_in_full(self, cfg: DictConfig) -> dict[str, bool]:
        """LoRA builders' ``train_vision_tower`` / ``train_merger`` from the recipe's ``freeze_vision_tower`` /
        ``freeze_merger``, the one vocabulary of trainability in every config: a LoRA run trains its adapters
        and the merger, not the tower, unless told otherwise. A value the ``model`` section sets itself (the
        older spelling) wins; builders without these arguments get nothing."""
        if not self.lora:
            return {}
        wanted = {"train_vision_tower": not cfg.get("freeze_vision_tower", True),
                  "train_merger": not cfg.get("freeze_merger", False)}  # fmt: skip
        return {k: v for k, v in wanted.items() if k not in cfg.model and accepts_keyword(cfg.model._component_, k)}

    def _prepare(self, model: torch.nn.Module, cfg: DictConfig) -> None:
        """Trainable set, activation checkpointing and compilation (before sharding, names unchanged)."""
        if self.lora:
            train_adapters_only(model)
        freeze_tower, freeze_merger = bool(cfg.get("freeze_vision_tower", False)), bool(cfg.get("freeze_merger", False))
        for name, param in model.named_parameters():
            in_merger = name.startswith(MERGER_PREFIX)
            in_tower = name.startswith(VISION_TOWER_PREFIX) and not in_merger
            if (freeze_tower and in_tower) or (freeze_merger and in_merger):
                param.requires_grad_(False)
        if cfg.get("enable_activation_checkpointing", False):
            apply_activation_checkpointing(model)
        if cfg.get("compile", False):
            compile_blocks(model)

    def _resume(self, resume: bool | str) -> None:
        path = self.checkpointer.latest_state() if resume is True else Path(str(resume))
        if path is None:
            raise FileNotFoundError(
                f"resume_from_checkpoint=true but {self.checkpointer.state_root} holds no complete training state"
            )
        state = self.checkpointer.load_state(path, self.model, self.optimizer)
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.epoch, self.steps_in_epoch, self.global_step = state["epoch"], state["steps_in_epoch"], state["global_step"]
        self.history, self.train_seconds = state["history"], state["train_seconds"]
        self.skips.load_state_dict(state["skips"])
        if self.steps_in_epoch >= self.steps_per_epoch:
            self.epoch, self.steps_in_epoch = self.epoch + 1, 0
        if self.steps_in_epoch or self.batches.stream:  # a stream reads on across epochs
            self._resume_dataloader_state = state["dataloader"]
        if self.is_main:
            print(f"resumed from {path} at step {self.global_step} (epoch {self.epoch})", flush=True)

    def _evaluate(self, when: str) -> dict[str, float] | None:
        if self.eval_dataset is None:
            return None
        result = answer_accuracy(
            self.model, self.eval_dataset, self.collate_fn, batch_size=int(self.cfg.get("eval_batch_size", 8)),
            device=self.device, dtype=self.dtype, max_samples=self.cfg.get("eval_max_samples"),
        )  # fmt: skip
        if self.is_main:
            say(accuracy_line(result, when))
        return result

    # ---- training -----------------------------------------------------------------------------
    def train(self) -> None:
        """Run the remaining optimizer steps, saving resumable states as configured."""
        progress = TrainingProgress(self.total_steps, self.global_step, enabled=self.is_main)
        self.model.train()
        stopped_early = False
        try:
            while self.epoch < self.epochs and not stopped_early:
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
            stopped_early = self.stop_after_step is not None and self.global_step >= self.stop_after_step
            end_of_epoch = self.steps_in_epoch == self.steps_per_epoch
            if end_of_epoch:  # before the save, so a resumed run's history holds this report too
                self._report_epoch_skips(progress)
            if stopped_early or end_of_epoch or self.checkpointer.due(self.global_step):
                self.save_checkpoint()
            if stopped_early:
                return True
        return False

    def _report_epoch_skips(self, progress: TrainingProgress) -> None:
        """Console, metrics.json and the metric logger: the epoch's skips by cause with example record ids."""
        report = {"epoch": self.epoch, **self.skips.report("epoch")}
        self.history["skipped_by_epoch"].append(report)
        if self.is_main:
            progress.write(f"epoch {self.epoch}: {describe(report)}")
            if self.metric_logger is not None:
                self.metric_logger.log_dict(skipped_scalars(report), step=self.global_step)
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
        for _ in range(self.grad_accum):
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
            counts[0] += int((batch["seq_lens"] > 0).sum()) if "seq_lens" in batch else batch["tokens"].shape[0]
            counts[1] += batch["attention_mask"].sum() if "attention_mask" in batch else batch["tokens"].numel()
            del micro_loss
        if micro_batches == 0:
            return None
        global_tokens = all_reduce_sum(tokens)
        # FSDP2 averages gradients over ranks; scaling by world/tokens turns that into sum/tokens.
        scale = self.world_size / max(int(global_tokens), 1)
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.mul_(scale)
        grad_norm = gradient_norm(self.model, None if self.clip_grad_norm is None else float(self.clip_grad_norm))
        global_loss = float(all_reduce_sum(loss_sum)) / max(int(global_tokens), 1)
        problem = nonfinite_message(self.global_step + 1, global_loss, grad_norm)
        if problem is not None and not self.skip_nonfinite:
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
        if self.metric_logger is not None and self.global_step % self.log_every == 0:
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
            "skips": self.skips.state_dict(),
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
        self.history["skipped_in_run"] = self.skips.report("run")
        check_weights_finite(self.model)
        final_dir = self._save_final_weights()
        if self.is_main:
            self._write_report(final_dir)
        return final_dir

    def _show_examples(self) -> None:
        """Print the generated answers to the first `eval_examples` held-out questions (one process only: the
        KV-cached generation runs on an unsharded model)."""
        count = int(self.cfg.get("eval_examples", 0))
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
        if not self.cfg.get("save_merged_weights", True):
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

    def _write_report(self, final_dir: Path | None) -> None:
        before, after = self.history.get("eval_before"), self.history.get("eval_after")
        metrics_path = write_metrics(self.output_dir / "metrics.json", self._metrics(final_dir))
        title = f"{type(self).__name__}: {self.global_step} steps"
        if before and after:
            title += f", held-out accuracy {before['accuracy']:.0%} -> {after['accuracy']:.0%}"
        plot_path = plot_history(self.output_dir / "loss.png", self.history, title)
        skipped = describe(self.history["skipped_in_run"])
        print(f"trained {self.global_step} steps in {self.train_seconds:.1f}s; {skipped}; "
              f"metrics: {metrics_path}; loss plot: {plot_path}", flush=True)  # fmt: skip
        adapter_only = self.lora and not self.cfg.get("save_merged_weights", True)
        print(f"{'LoRA adapter (PEFT format)' if adapter_only else 'HF checkpoint'}: {final_dir}", flush=True)

    def cleanup(self) -> None:
        if getattr(self, "metric_logger", None) is not None:  # None too when setup failed before building it
            self.metric_logger.close()
        destroy_distributed()


def init_weights(model: torch.nn.Module, std: float) -> None:
    """From-scratch init as HF's `initializer_range`: weights ~ N(0, std), biases 0.

    torch's default embedding init (N(0, 1)) gives a tied output projection logits of std ~sqrt(dim):
    a loss near 100 at step 0 that the first hundred steps only spend shrinking.
    """
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("lora_a", "lora_b"):  # adapters keep their own (zero-B) init
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv3d)):
            torch.nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)


def _seed_everything(seed: int) -> None:
    """Same seed on every rank: identical model init, so sharding a random init is consistent."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_recipe(recipe_class: type[FinetuneRecipe], cfg: DictConfig) -> None:
    """setup -> train -> finish -> cleanup, the sequence every fine-tuning recipe_main runs."""
    recipe = recipe_class(cfg)
    try:
        recipe.setup(cfg)
        recipe.train()
        recipe.finish()
    except BaseException:
        _cleanup_quietly(recipe)  # the run's own error must stay the last thing printed
        raise
    recipe.cleanup()


def _cleanup_quietly(recipe: FinetuneRecipe) -> None:
    try:
        recipe.cleanup()
    except Exception as error:  # reported, but never raised over the error that ended the run
        print(f"(cleanup after the error below also failed: {type(error).__name__}: {error})", file=sys.stderr)

