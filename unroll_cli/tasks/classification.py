"""The image classification task (Sulam et al. 2020): MNIST, Fashion-MNIST, CIFAR-10, SVHN held as
tensors on the device (:mod:`unroll_cli.data.images` reads the files), augmented per batch; accuracy
per epoch, final, best and averaged over a window of epochs (the official notebooks' number), and
per number of unfoldings at test time. Options: a rotated MNIST-rot style split of the pooled images
(:mod:`unroll_cli.data.rotated`) and ZCA whitening (:mod:`unroll_cli.data.whitening`).
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig

from unroll_cli.errors import ConfigError
from unroll_cli.schema import SEED_RANGE, any_number, constrained, evaluation_only, register_schema
from unroll_cli.data.images import (DATASETS, SPLIT_SEED, dataset_folder, load_dataset, random_crop, random_hflip,
                                    to_float)
from unroll_cli.data.rotated import rotated_split as draw_rotated_split
from unroll_cli.data.whitening import ZCA
from unroll_cli.record import figures
from unroll_cli.record.labels import model_title
from unroll_cli.record.report import Published, Report, Table
from unroll_cli.tasks.base import SeededStream

Batch = tuple[torch.Tensor, torch.Tensor]  # (images, labels)


@register_schema("data", "image")
class ImageDataConfig:
    """Image classification through torchvision's dataset classes, held as tensors on the device."""

    _target_: str = "unroll_cli.tasks.classification.ImageClassification"
    name: str = MISSING  # mnist | fashion_mnist | cifar10 | svhn
    root: str = evaluation_only("${oc.env:UNROLL_DATA,./data}")
    download: bool = evaluation_only(True)
    batch_size: int = constrained(128, "an integer >= 1", lambda v: v >= 1)
    eval_batch_size: int = constrained(1000, "an integer >= 1", lambda v: v >= 1, evaluation=True)
    arch: str = "mnist"  # the model architecture this data calls for: mnist | cifar10 | mnist_small
    # per channel; the channel counts are checked against the dataset when it is read
    normalize_mean: Optional[List[float]] = constrained(None, "null or numbers", any_number)
    normalize_std: Optional[List[float]] = constrained(None, "null or numbers > 0",
                                                       lambda v: v is None or all(s > 0 for s in v))
    random_crop_padding: int = constrained(0, "an integer >= 0 (0: no crop)", lambda v: v >= 0)
    hflip: bool = False
    # 0: evaluate on the test set every epoch, as the paper's notebooks
    val_size: int = constrained(0, "an integer >= 0 (0: the test set)", lambda v: v >= 0)
    # a random subset of the training set, for quick runs
    n_train: Optional[int] = constrained(None, "null (all) or an integer >= 1", lambda v: v is None or v >= 1)
    # a random subset of the test set, for quick runs (the same for every run seed)
    n_test: Optional[int] = constrained(None, "null (all) or an integer >= 1", lambda v: v is None or v >= 1)
    # first and last epoch (1-based, inclusive) of the reported mean accuracy; null: the last 10
    acc_mean_epochs: Optional[List[int]] = constrained(
        None, "null or [first, last] with 1 <= first <= last",
        lambda v: v is None or (len(v) == 2 and 1 <= v[0] <= v[1]), changeable=True)
    # an MNIST-rot style set: [n_train, n_test] images drawn from the pooled train and test images, each
    # rotated by a fixed angle uniform in [0, 360) degrees, both from rotation_seed (not the run's seed)
    rotated_split: Optional[List[int]] = constrained(
        None, "null or [n_train, n_test], integers >= 1",
        lambda v: v is None or (len(v) == 2 and all(n >= 1 for n in v)))
    rotation_seed: int = constrained(0, *SEED_RANGE)
    # each channel standardised by the set's own statistics, then ZCA-whitened (Theodosis & Ba 2022)
    zca: bool = False
    # whose statistics whiten the validation and test images: train | own (each set its own, as the
    # authors' code does)
    zca_statistics: str = constrained("train", "train or own", lambda v: v in ("train", "own"))


def accuracy_summary(history: list[dict], monitor: str, final: float, epochs: list[int] | None) -> dict:
    """Best and windowed-mean accuracy over the per-epoch evaluations (Sulam et al.'s notebooks print
    the mean over epochs 81-99 / 141-149, ``np.mean(acc[-20:-1])``); default window: the last 10."""
    per_epoch = [row[monitor] for row in history if monitor in row]
    if not per_epoch:
        return {"acc_best": final, "acc_last_k_mean": final}
    first, last = epochs if epochs is not None else (max(1, len(per_epoch) - 9), len(per_epoch))
    window = per_epoch[first - 1:last]
    return {"acc_best": max(per_epoch), "acc_last_k_mean": sum(window) / len(window)}


class ImageClassification(SeededStream):
    """The classification Task: images on the device, per-batch augmentation, accuracy metrics.

    An epoch visits every training image once in a fresh random order, in ``ceil(n / batch_size)``
    batches (the last one smaller, like a DataLoader without ``drop_last``, as in the paper's
    notebooks). ``val_size > 0`` holds out that many training images (a fixed random subset, seed
    :data:`SPLIT_SEED`, the same for every run seed); ``n_train`` then takes a fixed random subset of
    the rest, and ``n_test`` one of the test set. Shuffling and augmentation draw from one generator
    seeded by ``seed``, on the device.
    """

    kind = "classification"
    model_protocol = {"unfoldings": "the accuracy per number of unfoldings"}
    monitor_mode = "max"
    primary_metric = "test/acc"

    def __init__(self, name: str, root: str = "./data", download: bool = True, batch_size: int = 128,
                 eval_batch_size: int = 1000, arch: str = "mnist",
                 normalize_mean: Sequence[float] | None = None, normalize_std: Sequence[float] | None = None,
                 random_crop_padding: int = 0, hflip: bool = False, val_size: int = 0,
                 n_train: int | None = None, n_test: int | None = None, acc_mean_epochs: Sequence[int] | None = None,
                 rotated_split: Sequence[int] | None = None, rotation_seed: int = 0, zca: bool = False,
                 zca_statistics: str = "train", seed: int = 0,
                 device: str | torch.device = "cpu", trainer: DictConfig | None = None):
        self._check(name, batch_size, eval_batch_size, normalize_mean, normalize_std,
                    random_crop_padding, val_size, n_train)
        if zca and normalize_mean is not None:
            raise ConfigError("data.zca=true standardises each channel by the data's own statistics: set "
                              "data.normalize_mean=null and data.normalize_std=null")
        max_epochs = trainer.get("max_epochs") if trainer is not None else None
        if acc_mean_epochs is not None and not (
                len(acc_mean_epochs) == 2 and 1 <= acc_mean_epochs[0] <= acc_mean_epochs[1] <= (max_epochs or 1e9)):
            raise ConfigError(f"data.acc_mean_epochs={list(acc_mean_epochs)} is not allowed: [first, last] with "
                              f"1 <= first <= last <= trainer.max_epochs ({max_epochs})")
        self.acc_mean_epochs = None if acc_mean_epochs is None else list(acc_mean_epochs)
        self.name, self.arch = name, arch
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.padding, self.hflip = int(random_crop_padding), bool(hflip)
        self.device = torch.device(device)
        self.in_channels, _, self.num_classes = DATASETS[name]
        self.monitor = "val/acc" if val_size > 0 else "test/acc"

        train_x, train_y, test_x, test_y = load_dataset(name, root, download)
        self.data_source = f"{name} from {dataset_folder(name, root)}"
        self.rotated = rotated_split is not None
        if self.rotated:
            pool = len(train_x) + len(test_x)
            if sum(rotated_split) > pool:
                raise ConfigError(f"data.rotated_split={list(rotated_split)} asks for more than the {pool} train "
                                  f"and test images of {name}")
            drawn = draw_rotated_split((train_x, train_y), (test_x, test_y), tuple(rotated_split), rotation_seed)
            (train_x, train_y), (test_x, test_y) = drawn.train, drawn.test
            self.data_source += (f", {rotated_split[0]} train and {rotated_split[1]} test images rotated "
                                 f"(data.rotation_seed={rotation_seed})")
        if val_size + (n_train or 0) > len(train_x):
            raise ConfigError(f"data.val_size={val_size} + data.n_train={n_train} exceed the "
                              f"{len(train_x)} training images of {name}")
        val_x = val_y = None
        if val_size > 0 or n_train is not None:
            order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
            val_idx, rest = order[:val_size], order[val_size:]
            if n_train is not None:
                rest = rest[:n_train]
            if val_size > 0:
                val_x, val_y = train_x[val_idx], train_y[val_idx]
            train_x, train_y = train_x[rest], train_y[rest]
        if n_test is not None:
            if n_test > len(test_x):
                raise ConfigError(f"data.n_test={n_test} exceeds the {len(test_x)} test images of {name}")
            keep = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(SPLIT_SEED))[:n_test]
            test_x, test_y = test_x[keep], test_y[keep]

        on = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        self.train_images, self.train_labels = on(train_x), on(train_y)
        self.val_images, self.val_labels = on(val_x), on(val_y)
        self.test_images, self.test_labels = on(test_x), on(test_y)
        self.mean = self.std = None
        if normalize_mean is not None:
            shape = (1, self.in_channels, 1, 1)
            self.mean = torch.tensor(list(normalize_mean), dtype=torch.float32, device=self.device).view(shape)
            self.std = torch.tensor(list(normalize_std), dtype=torch.float32, device=self.device).view(shape)
        self.whitening = None
        if zca:
            train_zca = ZCA(train_x).to(self.device)
            own = zca_statistics == "own"
            self.whitening = {"train": train_zca,
                              "val": ZCA(val_x).to(self.device) if own and val_x is not None else train_zca,
                              "test": ZCA(test_x).to(self.device) if own else train_zca}
        self.steps_per_epoch = math.ceil(len(self.train_images) / self.batch_size)
        self.gen = torch.Generator(device=self.device).manual_seed(int(seed))

    @staticmethod
    def _check(name, batch_size, eval_batch_size, mean, std, padding, val_size, n_train) -> None:
        if name not in DATASETS:
            raise ConfigError(f"data.name={name!r}: expected one of {', '.join(DATASETS)}")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r}: expected a positive integer")
        if not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"data.random_crop_padding={padding!r}: expected an integer >= 0 (0 = no crop)")
        side = DATASETS[name][1]
        if padding >= side:
            raise ConfigError(f"data.random_crop_padding={padding} does not fit the {side}x{side} images of "
                              f"data.name={name}: a random crop could hold no pixel of its image; choose a "
                              f"padding below {side}")
        if not isinstance(val_size, int) or val_size < 0:
            raise ConfigError(f"data.val_size={val_size!r}: expected an integer >= 0 (0 = the test set)")
        if n_train is not None and (not isinstance(n_train, int) or n_train < 1):
            raise ConfigError(f"data.n_train={n_train!r}: expected a positive integer or null (all)")
        if (mean is None) != (std is None):
            raise ConfigError("data.normalize_mean and data.normalize_std: set both or neither")
        channels = DATASETS[name][0]
        for key, values in (("normalize_mean", mean), ("normalize_std", std)):
            if values is not None and len(values) != channels:
                raise ConfigError(f"data.{key}={list(values)}: {name} has {channels} channel(s), "
                                  f"give {channels} value(s)")
        if std is not None and any(not s > 0 for s in std):
            raise ConfigError(f"data.normalize_std={list(std)}: every value must be > 0")

    # ------------------------------------------------------------------ training
    def model_kwargs(self) -> dict:
        """What a model needs from the data to be built."""
        return {"arch": self.arch, "in_channels": self.in_channels, "num_classes": self.num_classes,
                "image_size": self.train_images.shape[-1]}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Training preprocessing of a uint8 batch: random crop, flip, scaling, normalisation."""
        images = random_crop(images, self.padding, self.gen)
        if self.hflip:
            images = random_hflip(images, self.gen)
        return self.preprocess(images, "train")

    def preprocess(self, images: torch.Tensor, split: str = "test") -> torch.Tensor:
        """Evaluation preprocessing of a uint8 batch of ``split`` (train, val, test): scaling and
        normalisation, or with ``zca`` standardisation and whitening by that split's statistics."""
        x = to_float(images, self.mean, self.std)
        return x if self.whitening is None else self.whitening[split](x)

    def train_batches(self) -> Iterator[Batch]:
        """One epoch of augmented (images, labels) batches on the task's device."""
        order = torch.randperm(len(self.train_images), generator=self.gen, device=self.device)
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.augment(self.train_images[idx]), self.train_labels[idx]

    def loss(self, outputs: torch.Tensor, batch: Batch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Negative log-likelihood of the labels (``outputs`` are log-probabilities); a model with
        ``joint_loss`` makes the training loss of it and its own term of the same forward (DenSaE's
        classifier: ``(1 - beta) * reconstruction + beta * NLL``)."""
        nll = F.nll_loss(outputs.float(), batch[1])
        joint = getattr(model, "joint_loss", None)
        return nll if joint is None else joint(nll)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _score(self, model: torch.nn.Module, split: str, unfoldings: int | None = None) -> dict[str, float]:
        """Accuracy in % (``acc``) and mean NLL (``loss``) over a held set (val or test), in eval mode and
        eval batches; with a model that also reconstructs its input (it leaves the batch's mean per-image
        squared error in ``model.reconstruction``, as DenSaE's classifier), that error's mean too
        (``reconstruction``)."""
        images, labels = (self.val_images, self.val_labels) if split == "val" else (self.test_images, self.test_labels)
        was_training = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        reconstruction = None
        try:
            for start in range(0, len(images), self.eval_batch_size):
                x = self.preprocess(images[start:start + self.eval_batch_size], split)
                y = labels[start:start + self.eval_batch_size]
                out = model(x, unfoldings).float()
                nll += F.nll_loss(out, y, reduction="sum").double()
                correct += (out.argmax(dim=1) == y).sum()
                error = getattr(model, "reconstruction", None)
                if error is not None:
                    reconstruction = (0 if reconstruction is None else reconstruction) + error.double() * len(x)
        finally:
            model.train(was_training)
        n = max(len(images), 1)
        scores = {"acc": 100.0 * correct.item() / n, "loss": nll.item() / n}
        if reconstruction is not None:
            scores["reconstruction"] = reconstruction.item() / n
        return scores

    def validate(self, model: torch.nn.Module, unfoldings: int | None = None) -> dict[str, float]:
        """The monitored accuracy (%) and mean loss: on the validation set, or the test set if val_size=0."""
        split = self.monitor.split("/")[0]
        scores = self._score(model, split, unfoldings)
        return {self.monitor: scores["acc"], f"{split}/loss": scores["loss"]}

    def evaluate(self, model: torch.nn.Module, unfoldings: int | None = None) -> dict[str, float]:
        """Test accuracy (%) and mean loss (and reconstruction error, see :meth:`_score`), with
        ``unfoldings`` iterations (None = the model's default)."""
        return self._score(model, "test", unfoldings)

    def report(self, model: torch.nn.Module, model_name: str, paper: DictConfig | None, history: list[dict]) -> Report:
        """Final, best and windowed-mean test accuracy; accuracy per number of unfoldings T' = 0..T."""
        final = self.evaluate(model)
        metrics = {f"test/{key}": value for key, value in final.items()}
        summary = accuracy_summary(history, self.monitor, final["acc"], self.acc_mean_epochs)
        if self.monitor.startswith("test/"):  # per-epoch test accuracy, the paper's protocol
            metrics.update({f"test/{k}": v for k, v in summary.items()})
        else:
            metrics.update({f"val/{k}": v for k, v in summary.items()})
        depth = model.unfoldings
        layers = pd.DataFrame({"unfoldings": range(depth + 1),
                               "test/acc": [self.evaluate(model, t)["acc"] for t in range(depth + 1)]})
        value = None if paper is None else paper.get("acc", {}).get(self.setting(), {}).get(model_name)
        published = None if value is None else Published(paper.metric, float(value), paper.source)
        title = f"{model_title(model_name, model)} on {self.setting()}, T={depth}"
        plots = {"acc_per_unfolding.png": figures.per_layer_figure(layers, "unfoldings", "test accuracy (%)", title)}
        table = Table(layers, ["unfoldings"], "Test accuracy per number of unfoldings at test time")
        return Report(title, metrics, {"layers.csv": table}, plots, published=published)

    def metric_names(self) -> list[str]:
        """The metrics a run of this task reports (``published/...`` besides, when a paper has them)."""
        split = self.monitor.split("/")[0]
        return ["test/acc", "test/loss", f"{split}/acc_best", f"{split}/acc_last_k_mean"]

    def artifacts(self) -> dict:
        return {}

    def setting(self) -> str:
        """The published-table key: the dataset name (``_rot`` added for a rotated split)."""
        return f"{self.name}_rot" if self.rotated else self.name
