"""`ITATrainer`: `Trainer` with ITA's optimiser groups, schedule and two-mode evaluation (docs/method.md §4)."""

import os
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import trainer_log_levels

from .collator import ITADataCollator
from .metrics import load_ner_metric

# Inference modes of docs/method.md §4: with the image's visual context (x'), and the tweet alone (x).
EVAL_MODES = {"with_context": True, "text_only": False}
SELECTION_METRICS = ("mean_f1", "with_context_f1", "text_only_f1")


def has_accelerator() -> bool:
    """Whether torch sees a GPU or another accelerator (torch < 2.6 has no `torch.accelerator`: CUDA only)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class ITATrainingArguments(TrainingArguments):
    """`TrainingArguments` with ITA's settings and docs/method.md §4's reference defaults.

    Defaults follow the paper's XLM-R-large recipe: AdamW at 5e-6 for the encoder and emission layer, 5e-2
    for the CRF transitions, no warm-up, linear decay to 0, 10 epochs, batch 4, clipping 5.0, and the best
    epoch chosen on the mean of the with-context and text-only dev F1.
    """

    crf_learning_rate: float = field(
        default=5e-2,
        metadata={"help": "Learning rate of the CRF transition, start and end scores (docs/method.md §4: 0.05)."},
    )
    cva: bool = field(
        default=True,
        metadata={"help": "Cross-view alignment: also run the text-only view and add its NLL and the T²·KL term."},
    )
    do_train: bool = field(default=True, metadata={"help": "Train; False only evaluates --model_name_or_path."})
    # transformers 5 dropped this field (4.x had it without using it); train.py gives it its meaning.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start again: delete the checkpoints in --output_dir instead of resuming from the newest "
            "complete one."
        },
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the encoder and emission layer."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Total number of training epochs."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Tweets per training batch."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Tweets per evaluation batch."})
    max_grad_norm: float = field(default=5.0, metadata={"help": "Gradient clipping norm."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on dev (both modes)."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best is always kept)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best dev epoch, not the last."})
    metric_for_best_model: str | None = field(
        default="mean_f1", metadata={"help": f"Dev metric that picks the best epoch: one of {SELECTION_METRICS}."}
    )
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher selection metric is better."})
    # The collator reads the raw columns (tokens, ner_tags, visual_context); the model's forward takes none of them.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False for ITA."})
    # Under torch.distributed the other processes would repeat every warning of the main one.
    log_level_replica: str = field(
        default="error",
        metadata={
            "help": "Log level of the processes other than the main one (transformers' default: warning).",
            "choices": list(trainer_log_levels),
        },
    )
    # A list default: parsed from a string default, "none" would become [None], which transformers 5 refuses.
    report_to: list[str] | None = field(
        default_factory=lambda: ["none"], metadata={"help": "Experiment trackers to report to."}
    )

    def __post_init__(self):
        # Under torchrun / accelerate launch on a machine without an accelerator, accelerate forms a process
        # group (gloo) only when told to use the CPU; otherwise each process silently trains alone.
        if not self.use_cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1 and not has_accelerator():
            self.use_cpu = True
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("ITA's collator needs the dataset's raw columns: leave `remove_unused_columns=False`.")
        if self.metric_for_best_model not in SELECTION_METRICS + tuple(f"eval_{m}" for m in SELECTION_METRICS):
            raise ValueError(
                f"`metric_for_best_model` must be one of {SELECTION_METRICS}, got {self.metric_for_best_model!r}."
            )


class EpochTimerCallback(TrainerCallback):
    """Records the wall time of each epoch's training steps (evaluation excluded) in the trainer's log history."""

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start, self._start_step = time.perf_counter(), state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self._start
        steps = state.global_step - self._start_step
        state.log_history.append(
            {"epoch": state.epoch, "step": state.global_step, "epoch_train_seconds": seconds, "epoch_steps": steps}
        )


class ITATrainer(Trainer):
    """Trains an `ITAForTokenClassification` and evaluates it in both inference modes.

    - Optimiser: AdamW with the CRF parameters in their own group at `args.crf_learning_rate` (no weight
      decay); the linear schedule scales every group alike, so the CRF rate decays to 0 as well.
    - Data: rows with `tokens`, `ner_tags`, `visual_context`; unless a `data_collator` is given, an
      `ITADataCollator` encodes them, with the text-only view when `args.cva` is on.
    - Evaluation: `evaluate()` decodes the dataset with visual context and text only, and returns the
      `ita_seqeval` metrics (an `evaluate` module, see `ita_training.metrics`) for each (`eval_with_context_f1`,
      `eval_text_only_f1`, per type, strict IOB2) and their mean `eval_mean_f1`, the default selection metric.
      Under torch.distributed the processes share the rows (each decodes one slice, see `predict_tags`), and
      all of them get the metrics of the whole dataset.

    The `processing_class` must be the encoder's fast tokenizer.
    """

    def __init__(self, model=None, args=None, data_collator=None, *more, **kwargs):
        super().__init__(model, args, data_collator, *more, **kwargs)
        if self.processing_class is None:
            raise ValueError("ITATrainer needs the encoder's tokenizer: pass `processing_class=tokenizer`.")
        # Trainer puts a generic padding collator in place of a missing one; only then is ITA's own used, so a
        # collator the caller gives is kept.
        if data_collator is None:
            self.data_collator = ITADataCollator(
                self.processing_class, self.model.config.max_context_tokens, use_context=True, text_view=self.args.cva
            )
        self.add_callback(EpochTimerCallback())
        self.ner_metric = load_ner_metric()

    def create_optimizer(self):
        if self.optimizer is not None:
            return self.optimizer
        decay = set(self.get_decay_parameter_names(self.model))
        groups = {"decay": [], "no_decay": [], "crf": []}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            key = "crf" if name.startswith("crf.") else "decay" if name in decay else "no_decay"
            groups[key].append(parameter)
        if not groups["crf"]:
            raise ValueError("The model has no trainable `crf.` parameters; ITATrainer trains ITA models only.")
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        self.optimizer = optimizer_cls(
            [
                {"params": groups["decay"], "weight_decay": self.args.weight_decay},
                {"params": groups["no_decay"], "weight_decay": 0.0},
                {"params": groups["crf"], "weight_decay": 0.0, "lr": self.args.crf_learning_rate},
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    @torch.no_grad()
    def predict_tags(self, dataset: Dataset, use_context: bool, description: str = "Decoding") -> list[list[str]]:
        """Viterbi BIO tags of every row of `dataset`, with or without its visual context.

        Under torch.distributed each process decodes one contiguous slice of the rows (the slices cover the
        dataset exactly once: no padding with repeated rows, unlike `DistributedSampler`), and every process
        gets all the predictions back in row order.

        Returns:
            One list of tag strings per row of `dataset`, as long as the row's `tokens`.
        """
        world_size, rank = self.args.world_size, self.args.process_index
        start, stop = len(dataset) * rank // world_size, len(dataset) * (rank + 1) // world_size
        # The unwrapped model: a forward of the DDP wrapper would wait for the other processes' gradients.
        model = self.model
        collator = ITADataCollator(
            self.processing_class, model.config.max_context_tokens, use_context=use_context, text_view=False
        )
        rows = dataset.select_columns([c for c in ("id", "tokens", "visual_context") if c in dataset.column_names])
        if world_size > 1:
            rows = rows.select(range(start, stop))
        loader = DataLoader(rows, batch_size=self.args.per_device_eval_batch_size, collate_fn=collator)
        was_training = model.training
        model.eval()
        id2label = model.config.id2label
        predictions: list[list[str]] = []
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        for batch in tqdm(loader, desc=description, disable=quiet):
            batch = {name: tensor.to(self.args.device) for name, tensor in batch.items()}
            tags = model(**batch, return_tags=True).tags
            for row in tags.tolist():
                predictions.append([id2label[tag] for tag in row if tag >= 0])
        model.train(was_training)
        if world_size > 1:
            # One (start, slice) pair per process, in rank order; sorting by start makes the order explicit.
            slices = sorted(gather_object([(start, predictions)]), key=lambda pair: pair[0])
            predictions = [tags for _, part in slices for tags in part]
        if len(predictions) != len(dataset):
            raise RuntimeError(
                f"Decoded {len(predictions)} rows of a {len(dataset)}-row dataset across "
                f"{world_size} process(es); every row must be decoded exactly once."
            )
        return predictions

    def evaluate_modes(self, dataset: Dataset, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Seqeval metrics of `dataset` in both inference modes, with the mean F1 of the two."""
        label_names = self.model.config.id2label
        gold = [[label_names[tag] for tag in tags] for tags in dataset["ner_tags"]]
        metrics: dict[str, float] = {}
        for mode, use_context in EVAL_MODES.items():
            start = time.perf_counter()
            predicted = self.predict_tags(dataset, use_context, description=f"{metric_key_prefix} {mode}")
            for name, value in self.ner_metric.compute(predictions=predicted, references=gold).items():
                metrics[f"{metric_key_prefix}_{mode}_{name}"] = value
            metrics[f"{metric_key_prefix}_{mode}_runtime"] = time.perf_counter() - start
        metrics[f"{metric_key_prefix}_mean_f1"] = (
            metrics[f"{metric_key_prefix}_with_context_f1"] + metrics[f"{metric_key_prefix}_text_only_f1"]
        ) / 2
        return metrics

    def evaluate(
        self,
        eval_dataset: Dataset | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluates in both inference modes (see `evaluate_modes`), logs the metrics and informs the callbacks."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("ITATrainer.evaluate needs an evaluation dataset (`eval_dataset`).")
        if isinstance(dataset, dict):
            raise ValueError("ITATrainer evaluates one dataset at a time; pass a single `datasets.Dataset`.")
        metrics = self.evaluate_modes(dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
