"""The metric contract and the evaluation context metrics share (torch-free at import).

A :class:`Metric` declares what it is (``name``, ``modality``), what the model must be able to do
(``needs``: capabilities), which ``metrics.json`` keys it writes (``outputs``), which
``params.yaml: evaluation.*`` settings it reads (``settings``, with their defaults) and the PNG plots it
draws (``plots``). Its :meth:`Metric.compute` asks the :class:`EvalContext` only for the fields it needs;
the context computes each field once, on first use, and caches it (samples, classifier features, the
real-vs-real floor, ...), so metrics that share an input never compute it twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

# the capabilities a metric may need; "samples" every model has (GenerativeModel.sample is abstract)
CAPABILITIES = frozenset({"samples", "nll", "score", "encode", "decode", "conditional"})
MODALITIES = ("image", "tokens", "any")

# evaluation.* settings the context itself reads (the metrics add their own in Metric.settings)
CONTEXT_SETTINGS: dict[str, Any] = {
    "metrics": None,              # list of metric names; null: the modality's default set
    "num_samples": 1000,          # capped at the test split's size so the real floor uses the same N
    "batch_size": 500,
    "seed": 0,
    "classifier": {"epochs": 8},
    "sample_labels": "auto",      # conditional models: in_turn | proportional | auto (EvalContext.label_rule)
}
LABEL_RULES = ("auto", "in_turn", "proportional")

CLASSIFIER_CHANNELS, CLASSIFIER_MIN_SIZE = (1, 3), 8  # images the domain classifier takes (evaluation.classifier)
# the domain classifier of each modality: a module with input_problem(shape, data name) -> str | None (what it
# takes and what the data has, when it cannot take it),
# load_or_train_classifier(cache_dir, data_sha256, train_x, train_y, num_classes, *, test_images, test_labels,
# seed, epochs) -> (model, info) and extract(model, x) -> (features float64 N x d, logits float64 N x K)
CLASSIFIERS: dict[str, str] = {"image": "evaluation.classifier", "tokens": "evaluation.text_classifier"}
# the data curves metrics may give (EvalContext.curves) -> their columns, x first; evaluate writes each as a CSV
CURVES: dict[str, tuple[str, str]] = {"roc": ("fpr", "tpr")}
NEAREST_K = 5  # PRDC's k (evaluation.metrics.generation_metrics): every set it sees needs more points



def too_few_samples(num_samples: int, n_test: int) -> str | None:
    """The problem with ``evaluation.num_samples`` on a test split of ``n_test`` images, or None: the
    generation metrics use min(num_samples, n_test) samples and PRDC needs more than NEAREST_K."""
    n = min(num_samples, n_test)
    if n > NEAREST_K:
        return None
    return (f"{num_samples} capped at the test split's {n_test} images leaves {n} samples; PRDC (nearest_k = "
            f"{NEAREST_K}) needs at least {NEAREST_K + 1}")


Result = dict[str, tuple[Any, dict[str, Any]]]  # output key -> (value, setting beyond the common one)


class Skip(Exception):
    """Raised by :meth:`Metric.compute` when the metric cannot run with this configuration; the
    message is recorded under ``metrics.json: skipped.<name>``."""


def to_model_input(x: np.ndarray, modality: str = "image") -> np.ndarray:
    """Stored data -> the array a model takes, by the data's modality module (``contracts.modalities``;
    images: uint8 0..255 -> float32 in [0, 1])."""
    from contracts.modalities import get_modality

    return get_modality(modality).to_model(x)


class Metric:
    """One metric (or a family of output keys computed together). Subclass, set the class attributes,
    implement :meth:`compute`, and add one line to ``evaluation.suite.METRICS``."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "any"                     # "image" | "tokens" | "any"
    needs: ClassVar[frozenset[str]] = frozenset()        # subset of CAPABILITIES
    outputs: ClassVar[tuple[str, ...]] = ()              # metrics.json keys it may write
    # the outputs a reviewer compares between commits (the flat DVC metrics summary, `dvc metrics diff`):
    # None means all of `outputs`; numbers only reach it (lists and strings are left out)
    summary: ClassVar[tuple[str, ...] | None] = None
    settings: ClassVar[dict[str, Any]] = {}              # evaluation.<key> -> default
    plots: ClassVar[tuple[str, ...]] = ()                # PNG file names under the plot folder
    default: ClassVar[bool] = True                       # part of the modality's default set
    uses_generation: ClassVar[bool] = False              # reads ctx.generation / ctx.floor (FID, KID, PRDC)
    uses_classifier: ClassVar[bool] = False              # reads the domain classifier (implied by the above)

    def check(self, ctx: "EvalContext") -> None:
        """Before any metric computes anything (no classifier, no samples): raise ConfigError naming the
        setting when these settings cannot give a value on this data (or :class:`Skip`)."""
        if self.uses_generation or self.uses_classifier:
            ctx.check_classifier(self.name)
        if self.uses_generation:
            ctx.check_generation()

    def compute(self, ctx: "EvalContext") -> Result:
        """{output key: (value, setting)}; may write ``self.plots`` through ``ctx.plot_path``.
        Raises :class:`Skip` when it cannot run with these settings."""
        raise NotImplementedError

    @classmethod
    def missing(cls, capabilities: frozenset[str] | set[str]) -> list[str]:
        """The needed capabilities the model lacks (sorted); empty when the metric can run."""
        return sorted(set(cls.needs) - set(capabilities))


class _cached:
    """A lazily computed, cached attribute (functools.cached_property without the lock)."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn, self.name = fn, fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class EvalContext:
    """What metrics share for one evaluation, each field computed on first use and cached.

    Inputs: ``model`` (a loaded GenerativeModel), ``data`` (a prepared data set with ``load(split)``,
    ``name``, ``sha256``, ``num_classes``, ``shape``), ``settings`` (the merged ``evaluation.*`` dict),
    ``device``, ``plot_dir`` (an existing, empty folder), ``classifier_dir`` (the classifier cache) and
    ``holdout`` (classes left out of training), ``caption`` (what sample grids say about the model, e.g.
    ``vae v3 · run 1a2b3c4d · seed 0``). Arrays are numpy; images N x C x H x W.
    """

    def __init__(self, model: Any, data: Any, settings: dict[str, Any], device: Any, plot_dir: Path,
                 classifier_dir: Path, holdout: list[int] | None = None, caption: str = ""):
        self.model, self.data, self.settings, self.device = model, data, settings, device
        self.caption = caption
        self.plot_dir, self.classifier_dir = Path(plot_dir), Path(classifier_dir)
        self.holdout = [int(c) for c in holdout or []]
        self.seed = int(settings["seed"])
        if settings.get("sample_labels", "auto") not in LABEL_RULES:
            from contracts.errors import ConfigError

            raise ConfigError("evaluation.sample_labels", f"expected one of {', '.join(LABEL_RULES)}, got "
                                                          f"{settings.get('sample_labels')!r}")
        self.num_classes = int(data.num_classes)
        self.pngs: list[Path] = []
        # data curves a metric hands to evaluate for DVC data plots: name -> rows of {column: number}
        # (CURVES names each one's columns; e.g. "roc": false and true positive rates)
        self.curves: dict[str, list[dict[str, float]]] = {}

    # ---- model and data ----------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """The data's modality (``DataSpec.modality``), as the model was built for it."""
        return self.model.config.data.modality

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({"samples"}) | frozenset(self.model.capabilities)

    @_cached
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 N x C x H x W, y int64 N) of the train split, as stored."""
        return self.data.load("train")

    @_cached
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the test split, as stored."""
        return self.data.load("test")

    @property
    def n(self) -> int:
        """Generated samples: evaluation.num_samples capped at the test split (the floor uses the same N)."""
        return min(int(self.settings["num_samples"]), len(self.test[0]))

    def check_classifier(self, metric: str) -> None:
        """The data's modality has a domain classifier (``CLASSIFIERS``) and it takes samples of this shape
        (images: 1 or 3 channels of at least CLASSIFIER_MIN_SIZE pixels a side)."""
        from contracts.errors import ConfigError

        if self.modality not in CLASSIFIERS:
            raise ConfigError("evaluation.metrics", f"{metric} needs a domain classifier and the {self.modality} "
                                                    f"modality has none: leave {metric} out of evaluation.metrics")
        problem = self.classifier_module.input_problem(tuple(int(v) for v in self.data.shape), self.data.name)
        if problem:
            raise ConfigError("evaluation.metrics", f"{metric} needs the domain classifier, which takes {problem}: "
                                                    f"leave {metric} out of evaluation.metrics")

    @property
    def classifier_module(self) -> Any:
        """The module of this modality's domain classifier (``CLASSIFIERS``)."""
        import importlib

        return importlib.import_module(CLASSIFIERS[self.modality])

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """A value several metrics share (e.g. decoded samples), computed by ``compute()`` on first use and
        cached under ``key`` for this evaluation."""
        cache = self.__dict__.setdefault("_shared", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def check_generation(self) -> None:
        """The generation metrics (FID, KID, PRDC, class coverage) compare n samples and the n first test
        images with the train split: each set needs more than NEAREST_K points (PRDC's k-NN radius)."""
        from contracts.errors import ConfigError

        n_train = len(self.train[1])
        problem = too_few_samples(int(self.settings["num_samples"]), len(self.test[0]))
        if problem:
            raise ConfigError("evaluation.num_samples", problem)
        if n_train <= NEAREST_K:
            raise ConfigError("evaluation.metrics", f"the train split of {self.data.name} has {n_train} images; "
                                                    f"FID/KID/PRDC compare against it and PRDC (nearest_k = "
                                                    f"{NEAREST_K}) needs at least {NEAREST_K + 1}")

    def batched(self, fn: Callable[[Any], Any], x: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """fn over float32 batches of ``x`` on the device -> one float32 numpy array (no grad)."""
        import torch

        with torch.no_grad():
            return np.concatenate([fn(torch.from_numpy(x[i:i + batch_size]).to(self.device)).float().cpu().numpy()
                                   for i in range(0, len(x), batch_size)])

    def plot_path(self, name: str) -> Path:
        """Where a plot goes; registered so the caller logs it with the report."""
        path = self.plot_dir / name
        self.pngs.append(path)
        return path

    # ---- samples -----------------------------------------------------------------------------
    @_cached
    def _generated(self) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        model, n, batch_size = self.model, self.n, int(self.settings["batch_size"])
        with torch.no_grad():
            gen = torch.Generator(device=model.device).manual_seed(self.seed)
            # conditional models get every class in turn, as the generator gives them without --label, so class
            # coverage measures the model and not the label draw; unbalanced data: the train proportions (label_rule)
            labels = self.sample_labels(n) if "conditional" in model.capabilities else None
            parts = [model.sample(min(batch_size, n - i), generator=gen,
                                  labels=None if labels is None else torch.from_numpy(labels[i:i + batch_size]).to(
                                      model.device)) for i in range(0, n, batch_size)]
        # float samples (images) as float32; integer ones (token ids) keep their integer dtype
        return np.concatenate([(p.float() if p.is_floating_point() else p).cpu().numpy() for p in parts]), labels

    @_cached
    def label_rule(self) -> str:
        """How a conditional model's sample labels are drawn (``evaluation.sample_labels``): ``in_turn`` (every
        class in turn, 0, 1, ..., K-1, 0, ...), ``proportional`` (in the train split's class proportions, so
        metrics comparing the samples with the data compare like with like when the classes are unbalanced),
        ``auto`` (the default): in turn when every class holds between 1/(2K) and 2/K of the train split, else
        proportional."""
        rule = str(self.settings.get("sample_labels", "auto"))
        if rule != "auto":
            return rule
        k = int(self.model.config.num_classes)
        shares = np.bincount(np.asarray(self.train[1], dtype=np.int64), minlength=k)[:k] / max(1, len(self.train[1]))
        return "in_turn" if ((shares >= 0.5 / k) & (shares <= 2.0 / k)).all() else "proportional"

    def sample_labels(self, n: int) -> np.ndarray:
        """int64 n labels by ``label_rule``; proportional: counts by largest remainder of n x the train shares,
        interleaved (class c's j-th label at position (j + 0.5) / count_c) so any prefix is near proportional."""
        k = int(self.model.config.num_classes)
        if self.label_rule == "in_turn":
            return np.arange(n, dtype=np.int64) % k
        counts = np.bincount(np.asarray(self.train[1], dtype=np.int64), minlength=k)[:k].astype(np.float64)
        quota = counts / counts.sum() * n
        take = np.floor(quota).astype(np.int64)
        take[np.argsort(-(quota - take), kind="stable")[:n - int(take.sum())]] += 1
        keys = np.concatenate([(np.arange(t) + 0.5) / t for t in take if t])
        labels = np.concatenate([np.full(t, c, dtype=np.int64) for c, t in enumerate(take) if t])
        return labels[np.argsort(keys, kind="stable")]

    @property
    def samples(self) -> np.ndarray:
        """n generated samples as the model gives them (images: float32 in its output range; tokens: int64
        ids N x T), seeded by evaluation.seed."""
        return self._generated[0]

    @property
    def requested_labels(self) -> np.ndarray | None:
        """The label each sample was asked for (conditional models), else None."""
        return self._generated[1]

    # ---- domain classifier and the features it gives ------------------------------------------
    @_cached
    def classifier(self) -> tuple[Any, dict[str, Any]]:
        """(DomainClassifier, info: path, test_accuracy, cached, train_seconds, n_test), trained once per
        data version and cached under classifier_dir."""
        (train_x, train_y), (test_x, test_y) = self.train, self.test
        return self.classifier_module.load_or_train_classifier(
            self.classifier_dir, self.data.sha256, train_x, train_y, self.num_classes, test_images=test_x,
            test_labels=test_y, seed=self.seed, epochs=int(self.settings["classifier"]["epochs"]))

    @property
    def classifier_loaded(self) -> bool:
        return "classifier" in self.__dict__

    @property
    def extractor(self) -> str:
        """Names the feature extractor in every setting: the domain classifier and its test accuracy."""
        return f"domain-classifier(data {self.data.sha256[:12]}, test acc {self.classifier[1]['test_accuracy']:.4f})"

    @_cached
    def features(self) -> dict[str, np.ndarray]:
        """Classifier features (float64 N x d) of "train", "test" (first n) and "fake"; "fake_logits"."""
        clf_lib = self.classifier_module
        model = self.classifier[0]
        samples = self.samples
        train_feats, _ = clf_lib.extract(model, self.train[0])
        test_feats, _ = clf_lib.extract(model, self.test[0][:self.n])
        fake_feats, fake_logits = clf_lib.extract(model, samples)
        return {"train": train_feats, "test": test_feats, "fake": fake_feats, "fake_logits": fake_logits}

    @property
    def kid_settings(self) -> dict[str, int]:
        kid = self.settings["kid"]
        return {"kid_subsets": int(kid["subsets"]), "kid_subset_size": max(2, min(int(kid["subset_size"]), self.n // 2))}

    @property
    def collapse_thresholds(self) -> dict[str, Any]:
        mc = self.settings["mode_collapse"]
        return {k: mc[k] for k in ("coverage_threshold", "kl_threshold", "recall_threshold")}

    @_cached
    def generation(self) -> dict[str, Any]:
        """evaluation.metrics.generation_metrics of the samples vs the train split (FID, KID, PRDC, class
        coverage, KL, mode collapse), computed once for every metric that reads it."""
        from evaluation import metrics as metric_lib

        _ = self.classifier  # the classifier first, then the samples (the order the RNG-free steps ran in)
        f = self.features
        return metric_lib.generation_metrics(
            f["train"], f["fake"], real_labels=self.train[1], fake_pred_labels=f["fake_logits"].argmax(1),
            num_classes=self.num_classes, seed=self.seed, min_share=self.settings["mode_collapse"].get("min_share"),
            extractor=self.extractor, nearest_k=NEAREST_K, **self.collapse_thresholds, **self.kid_settings)

    @_cached
    def floor(self) -> dict[str, Any]:
        """The same statistics for the test split vs the train split, same N: what a perfect model gets."""
        from evaluation import metrics as metric_lib

        f = self.features
        return metric_lib.generation_metrics(f["train"], f["test"], seed=self.seed, extractor=self.extractor,
                                             nearest_k=NEAREST_K, **self.kid_settings)

    def common_setting(self) -> dict[str, Any]:
        """The setting every value carries (the feature extractor once the classifier is loaded)."""
        base = {"n_samples": self.n, "reference": f"{self.data.name} train split ({len(self.train[0])})",
                "dataset": self.data.name, "data_sha256": self.data.sha256}
        return {"feature_extractor": self.extractor, **base} if self.classifier_loaded else base
