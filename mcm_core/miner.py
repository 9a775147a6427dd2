"""MinorityMiner: a re-calibration (RC) layer trained with focal loss on frozen features, and a
decision score that ranks unlabeled examples by how likely they belong to a tail class (or to no
labeled class at all).

Conventions, and where they differ from scikit-learn's: like an estimator, fit() returns self, the
attributes it learns end in "_", and per-sample scores come from score_samples() (the mcm_core
baselines use the same verb); numpy in, numpy out. Unlike scikit-learn, __init__ checks its options
(a bad MCM_MINER_OPTIONS fails when the backend starts, not at the first training) and keeps them
in one `config` dict, which save() writes with the weights; there is no score() (scikit-learn's
returns one number for a labeled set) and no get_params/clone.

    miner = MinorityMiner(num_classes=C, seed=0).fit(features, labels)
    miner.score_samples(features)  # (M,), higher = mine first
    miner.queue_scores(pool)       # the order in which a labeling budget teaches the model most
    miner.queue_size               # how many top examples queue_scores re-orders (0: none)
    miner.predict_proba(features)  # (M, C) re-calibrated probabilities
    miner.score_upper_bound        # 0 <= score <= bound
    miner.save(path); MinorityMiner.load(path)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .atomic import atomic_torch_save
from .autoencoder import INPUT_SPACES, AutoencoderScorer, default_hidden
from .baselines import entropy
from .rowwise import apply_rowwise
from .recalibration import RecalibrationLayer, fit_recalibration, inverse_frequency_alpha
from .metrics import tail_classes as skewness_tail
from .novelty import DEFAULT_K, DEFAULT_MAX_REFERENCE, NoveltyScorer, l2_normalise, stratified_reference
from .queue import (DEFAULT_DOUBT_PURITY, DEFAULT_QUEUE_TEACH, DEFAULT_TEACH_BY, DEFAULT_TEACH_RAMP, NOVEL_BUCKET,
                    TEACH_BY, bucket_purity, greedy_queue, window_rows)
from .scoring import RECONSTRUCTION_SCORE_BOUND, softmax, tail_or_novel
from .validation import check_features, check_labels, check_num_classes

log = logging.getLogger(__name__)

FORMAT = "mcm_core.MinorityMiner"
FORMAT_VERSION = 1  # unchanged: new config keys, the optional "score_weights" tensor and the optional novelty
# reference of the reconstruction strategies have old-file defaults
SCORE_WEIGHTINGS = ("alpha", "sqrt_alpha", "none")
AE_TRAIN_ON = ("head", "all")
STRATEGIES = ("tail_novelty", "reconstruction", "paper", "reconstruction_cold")
# strategy="paper": the paper's configuration of the reconstruction score (these options are forced).
TAIL_REFERENCE_PER_CLASS = 256  # labeled rows kept per tail class for the queue's distance term
COLD_STARTS = ("all", "any")  # reconstruction_cold: cold while all / any of the tail classes have no label
PAPER_PRESET = dict(input_space="logits", score_weighting="none", ae_train_on="all", rc_min_epochs=0, n_models=1)


class MinorityMiner:
    """Rank unlabeled examples by how likely they are to belong to a tail class or to no labeled class.

    The strategy is the decision module (docs/method.md, figures in docs/quality.md):
    - "tail_novelty" (default): 1 - (1 - T)(1 - N). T = the RC layer's probability mass on the
      labeled set's tail classes (skewness ratio < 0.3); N = calibrated kNN cosine novelty of the
      features against the labeled head-class rows (mcm_core.novelty). T finds the tail classes
      the RC layer learned, N the classes with no usable labeled example. No autoencoder.
    - "reconstruction": an ensemble of n_models autoencoders (C->10->9) learns the head classes'
      RC probability patterns; the score is the class-weighted reconstruction error
      S_w = sum_k alpha_k (p_k - p_hat_k)^2 (score_weighting="alpha"; "none" gives the plain S).
    - "paper": the paper's configuration of the same (one AE on standardised-free logits, plain
      S = ||softmax(z) - softmax(z_hat)||^2, trained on all rows, no RC warm-up): PAPER_PRESET.
    - "reconstruction_cold": the reconstruction score, plus the detection cold start
      (mcm_core.detection.box_scores) while no tail class has a labeled example (cold_start="all",
      detection's rule; "any": while one of them has none, measured worse: docs/method.md):
      1 - (1 - S_w / bound)(1 - H N), H = entropy of the RC probabilities / log C, N = the kNN
      novelty (H alone without a novelty reference). A class with no label has no tail pattern
      for S_w to find; an uncertain AND novel example is the best guess at one.

    RC layer: focal loss (gamma, alpha = normalised inverse class frequency by default), Adam,
    early stopping on a stratified hold-out with a warm-up of rc_min_epochs (the hold-out holds
    almost no tail example, so its loss is flat at first). rc_/ae_max_steps_per_epoch grow the
    batches on large labeled sets so the fit time stops growing with N."""

    def __init__(self, num_classes: int, seed: int = 0, *, gamma: float = 2.0, alpha: Any = None,
                 input_space: str = "probs", ae_hidden: tuple[int, ...] | None = None,
                 standardize: bool = False, n_models: int = 5, ae_min_steps: int = 2000,
                 ae_max_steps: int = 20000, ae_patience: int = 10, rc_lr: float = 1e-2,
                 rc_patience: int = 10, rc_max_epochs: int = 200, rc_weight_decay: float = 0.0,
                 score_weighting: str = "alpha", ae_train_on: str = "head", rc_min_epochs: int = 20,
                 rc_max_steps_per_epoch: int | None = 8, ae_max_steps_per_epoch: int | None = 32,
                 strategy: str = "tail_novelty", novelty_k: int = DEFAULT_K,
                 novelty_max_reference: int = DEFAULT_MAX_REFERENCE, queue_window: int = 500,
                 queue_teach: float = DEFAULT_QUEUE_TEACH, queue_teach_ramp: int = DEFAULT_TEACH_RAMP,
                 queue_teach_by: str = DEFAULT_TEACH_BY, queue_doubt_purity: float = DEFAULT_DOUBT_PURITY,
                 cold_start: str = "all"):
        self.num_classes = check_num_classes(num_classes)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "paper":
            input_space, score_weighting, ae_train_on, rc_min_epochs, n_models = (
                PAPER_PRESET[k] for k in ("input_space", "score_weighting", "ae_train_on", "rc_min_epochs",
                                          "n_models"))
        if cold_start not in COLD_STARTS:
            raise ValueError(f"cold_start must be one of {COLD_STARTS}, got {cold_start!r}")
        if int(queue_window) < 0:
            raise ValueError(f"queue_window must be >= 0, got {queue_window}")
        if not 0.0 <= float(queue_teach) <= 1.0:
            raise ValueError(f"queue_teach must be in [0, 1], got {queue_teach}")
        if queue_teach_by not in TEACH_BY:
            raise ValueError(f"queue_teach_by must be one of {TEACH_BY}, got {queue_teach_by!r}")
        if not 0.0 <= float(queue_doubt_purity) <= 1.0:
            raise ValueError(f"queue_doubt_purity must be in [0, 1], got {queue_doubt_purity}")
        if int(queue_teach_ramp) < 0:
            raise ValueError(f"queue_teach_ramp must be >= 0, got {queue_teach_ramp}")
        if int(novelty_k) < 1 or int(novelty_max_reference) < 2:
            raise ValueError(f"novelty_k must be >= 1 and novelty_max_reference >= 2, got {novelty_k}, "
                             f"{novelty_max_reference}")
        if input_space not in INPUT_SPACES:
            raise ValueError(f"input_space must be one of {INPUT_SPACES}, got {input_space!r}")
        if score_weighting not in SCORE_WEIGHTINGS:
            raise ValueError(f"score_weighting must be one of {SCORE_WEIGHTINGS}, got {score_weighting!r}")
        if ae_train_on not in AE_TRAIN_ON:
            raise ValueError(f"ae_train_on must be one of {AE_TRAIN_ON}, got {ae_train_on!r}")
        for name, v in (("rc_max_steps_per_epoch", rc_max_steps_per_epoch),
                        ("ae_max_steps_per_epoch", ae_max_steps_per_epoch)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0 <= int(rc_min_epochs) <= int(rc_max_epochs):
            raise ValueError(f"rc_min_epochs must be in [0, rc_max_epochs={rc_max_epochs}], got {rc_min_epochs}")
        if alpha is not None:
            a = np.asarray(alpha, dtype=np.float64)
            if a.ndim == 0:
                a = np.full(self.num_classes, float(a))
            if a.shape != (self.num_classes,) or not np.isfinite(a).all() or (a < 0).any():
                raise ValueError(f"alpha must be a non-negative scalar or a vector of {self.num_classes} values")
            alpha = [float(v) for v in a]
        self.config = dict(
            num_classes=self.num_classes, seed=int(seed), gamma=float(gamma), alpha=alpha,
            input_space=input_space,
            ae_hidden=list(ae_hidden) if ae_hidden else list(default_hidden(self.num_classes)),
            standardize=bool(standardize), n_models=int(n_models), ae_min_steps=int(ae_min_steps),
            ae_max_steps=int(ae_max_steps), ae_patience=int(ae_patience), rc_lr=float(rc_lr),
            rc_patience=int(rc_patience), rc_max_epochs=int(rc_max_epochs),
            rc_weight_decay=float(rc_weight_decay), score_weighting=score_weighting, ae_train_on=ae_train_on,
            rc_min_epochs=int(rc_min_epochs),
            rc_max_steps_per_epoch=None if rc_max_steps_per_epoch is None else int(rc_max_steps_per_epoch),
            ae_max_steps_per_epoch=None if ae_max_steps_per_epoch is None else int(ae_max_steps_per_epoch),
            strategy=strategy, novelty_k=int(novelty_k), novelty_max_reference=int(novelty_max_reference),
            queue_window=int(queue_window), queue_teach=float(queue_teach),
            queue_teach_ramp=int(queue_teach_ramp), queue_teach_by=queue_teach_by,
            queue_doubt_purity=float(queue_doubt_purity), cold_start=cold_start)
        self.seed = int(seed)
        self.in_dim_: int | None = None
        self.rc_: RecalibrationLayer | None = None
        self.ae_: AutoencoderScorer | None = None
        self.novelty_: NoveltyScorer | None = None
        self.tail_: list[int] = []
        # labeled tail-class rows (unit features, labels) for the queue's distance term
        self.tail_reference_ = np.zeros((0, 0), np.float32)
        self.tail_reference_labels_ = np.zeros(0, np.int64)
        self.fit_info_: dict = {}

    # ------------------------------------------------------------------ fit / score
    def _new_scorer(self, score_weights: np.ndarray | None = None) -> AutoencoderScorer:
        c = self.config
        return AutoencoderScorer(
            self.num_classes, input_space=c["input_space"], hidden=tuple(c["ae_hidden"]),
            standardize=c["standardize"], n_models=c["n_models"], min_steps=c["ae_min_steps"],
            max_steps=c["ae_max_steps"], patience=c["ae_patience"],
            max_steps_per_epoch=c["ae_max_steps_per_epoch"], score_weights=score_weights, seed=self.seed)

    def _score_weights(self, alpha: np.ndarray) -> np.ndarray | None:
        w = self.config["score_weighting"]
        if w == "none":
            return None
        a = np.asarray(alpha, np.float64)
        if a.sum() <= 0:
            raise ValueError("score_weighting needs alpha with a positive sum")
        return a if w == "alpha" else np.sqrt(a)

    def _ae_rows(self, y: np.ndarray, tail: list[int]) -> np.ndarray:
        """Rows the AE learns from: all, or only head-class rows so the few tail examples do not
        teach it tail patterns."""
        if self.config["ae_train_on"] == "all":
            return np.ones(len(y), bool)
        return ~np.isin(y, tail)

    def fit(self, features, labels, tail_classes: Sequence[int] | None = None) -> "MinorityMiner":
        """Train the RC layer on (features, labels), then the strategy's scorer: the novelty
        reference (tail_novelty) or the autoencoder on the RC outputs (reconstruction, paper).

        tail_classes: the class indices to mine (e.g. mcm_core.tails.choose_tail_classes, with the
        classes an admin declared); None = the paper's rule, skewness ratio < 0.3."""
        x = check_features(features)
        y = check_labels(labels, len(x), self.num_classes)
        c = self.config
        alpha = inverse_frequency_alpha(y, self.num_classes) if c["alpha"] is None \
            else np.asarray(c["alpha"], np.float32)
        rc, rc_res = self._fit_rc(x, y, self.seed, alpha)
        counts = np.bincount(y, minlength=self.num_classes)
        tail = skewness_tail(y, self.num_classes) if tail_classes is None else self._check_tail(tail_classes)
        info = {"n_labeled": int(len(y)), "labeled_per_class": counts.tolist(), "tail_classes": tail,
                "rc_best_epoch": rc_res.best_epoch, "rc_epochs": rc_res.epochs_run}
        info.update(self._false_alarms(x, y, tail, rc, rc_res.holdout))
        ae = novelty = None
        head = ~np.isin(y, tail)
        # every strategy keeps the novelty reference: tail_novelty's N, and the detection cold start's
        # (mcm_core.detection.box_scores); the other strategies can do without it on a tiny set
        if c["strategy"] == "tail_novelty" or head.sum() >= 2:
            novelty = NoveltyScorer(c["novelty_k"], c["novelty_max_reference"], self.seed).fit(x, y, head)
            info["novelty_reference"] = int(len(novelty.reference))
        self.tail_reference_ = np.zeros((0, x.shape[1]), np.float32)
        self.tail_reference_labels_ = np.zeros(0, np.int64)
        if c["strategy"] == "tail_novelty":
            keep = np.concatenate([stratified_reference(y, y == k, TAIL_REFERENCE_PER_CLASS, self.seed)
                                   for k in tail] or [np.zeros(0, np.int64)])
            self.tail_reference_ = l2_normalise(x[keep]) if len(keep) else np.zeros((0, x.shape[1]), np.float32)
            self.tail_reference_labels_ = y[keep]
        else:
            rows = self._ae_rows(y, tail)
            ae = self._new_scorer(self._score_weights(alpha)).fit(self._logits(x, rc)[rows])
            info.update(ae_steps=[i.steps for i in ae.infos], ae_rows=int(rows.sum()))
        self.rc_, self.ae_, self.novelty_, self.tail_, self.in_dim_ = rc, ae, novelty, tail, x.shape[1]
        self.fit_info_ = info
        log.info("MinorityMiner (%s) fitted on %d examples (per class %s, tail %s); RC best epoch %d/%d",
                 c["strategy"], len(y), counts.tolist(), tail, rc_res.best_epoch + 1, rc_res.epochs_run)
        return self

    def _false_alarms(self, x: np.ndarray, y: np.ndarray, tail: list[int], rc, holdout: np.ndarray) -> dict:
        """How often the RC layer calls a labeled common row it never trained on (its early-stopping
        hold-out) a tail class: the queue's estimate of the common examples in that class's bucket."""
        rows = holdout[~np.isin(y[holdout], tail)]
        pred = self._logits(x[rows], rc).argmax(1) if len(rows) else np.zeros(0, np.int64)
        return {"head_held_out": int(len(rows)), "tail_false_alarms": {str(k): int((pred == k).sum()) for k in tail}}

    def _check_tail(self, tail_classes: Sequence[int]) -> list[int]:
        tail = sorted({int(k) for k in tail_classes})
        if any(not 0 <= k < self.num_classes for k in tail) or len(tail) >= self.num_classes:
            raise ValueError(f"tail_classes must be distinct class indices in 0..{self.num_classes - 1} that leave "
                             f"at least one head class, got {list(tail_classes)}")
        return tail

    def _fit_rc(self, x: np.ndarray, y: np.ndarray, seed: int, alpha: np.ndarray):
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fit_recalibration(
                x, y, self.num_classes, gamma=c["gamma"], alpha=alpha, lr=c["rc_lr"],
                patience=c["rc_patience"], max_epochs=c["rc_max_epochs"],
                weight_decay=c["rc_weight_decay"], max_steps_per_epoch=c["rc_max_steps_per_epoch"],
                min_epochs=c["rc_min_epochs"], seed=seed)

    @staticmethod
    @torch.no_grad()
    def _logits(x: np.ndarray, rc: RecalibrationLayer) -> np.ndarray:
        """Row-wise in fixed-size padded blocks: a row's logits never depend on its batch (rowwise.py)."""
        rc.eval()
        return apply_rowwise(rc, x).astype(np.float32)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("MinorityMiner is not fitted: call fit(features, labels) first")

    def logits(self, features) -> np.ndarray:
        """Re-calibrated logits z (M, C)."""
        self._check_fitted()
        return self._logits(check_features(features, dim=self.in_dim_), self.rc_)

    def predict_proba(self, features) -> np.ndarray:
        """Re-calibrated probabilities softmax(z) (M, C)."""
        return softmax(self.logits(features)).astype(np.float32)

    def score_samples(self, features) -> np.ndarray:
        """(M,) float64 in [0, score_upper_bound], higher = mine first; each row's score depends
        only on that row (so chunks of a pool can be scored independently).

        tail_novelty: 1 - (1 - T)(1 - N) in [0, 1] (see the class docstring).
        reconstruction / paper: S_w = sum_k w_k (p_k - p_hat_k)^2, p = softmax(z) of the RC layer,
        p_hat its reconstruction (mean over the AE ensemble), w = alpha (score_weighting="alpha"),
        sqrt(alpha) renormalised, or 1 ("none": S = ||p - p_hat||^2)."""
        self._check_fitted()
        x = check_features(features, dim=self.in_dim_)
        if self.config["strategy"] == "tail_novelty":
            return tail_or_novel(self.tail_mass(x), self.novelty_.score(x))
        z = self._logits(x, self.rc_)
        s = self.ae_.score(z)
        if not self.cold_start:
            return s
        p = softmax(z)
        unsure = entropy(p) / np.log(self.num_classes) if self.num_classes > 1 else np.zeros(len(p))
        if self.novelty_ is not None:
            unsure = unsure * self.novelty_.score(x)
        return tail_or_novel(s / float(self.ae_.upper_bound), unsure)

    @property
    def cold_start(self) -> bool:
        """True for a fitted "reconstruction_cold" miner with a tail class without any labeled
        example (cold_start="any"), or with no tail class with one ("all"). Fixed at fit(), so a
        row's score never depends on its batch."""
        if self.config["strategy"] != "reconstruction_cold" or self.rc_ is None or not self.tail_:
            return False
        counts = list(self.fit_info_.get("labeled_per_class", []))
        counts += [0] * (self.num_classes - len(counts))
        unlabeled = [counts[k] == 0 for k in self.tail_]
        return any(unlabeled) if self.config["cold_start"] == "any" else all(unlabeled)

    def tail_mass(self, features) -> np.ndarray:
        """T = sum of the re-calibrated probabilities over the labeled set's tail classes (M,)."""
        p = self.predict_proba(features).astype(np.float64)
        return p[:, self.tail_].sum(1) if self.tail_ else np.zeros(len(p))

    def queue_scores(self, features, proba: np.ndarray | None = None, pool_size: int | None = None) -> np.ndarray:
        """Descending scores for a whole unlabeled pool (tail_novelty only): the order in which a
        labeling budget teaches the model the most while keeping the tail yield (mcm_core.queue).

        Among the ``queue_window`` highest-scored examples: round-robin over the RC layer's
        predicted tail classes, least-labeled first (examples predicted as a head class keep their
        places), and within a bucket greedily the largest score x ((1 - w) + w x v). v
        (``queue_teach_by``): "distance" to the labeled and already-queued examples of that class, w =
        queue_teach x min(1, the class's labels / queue_teach_ramp); "doubt" of a plain classifier, 1 -
        proba[row, bucket class], or "novel_doubt", that doubt x the row's novelty against the labeled
        head rows, w = queue_teach, in a bucket whose `bucket_purity` (from the RC layer's false alarms
        on its held-out head rows, fit_info_) reaches ``queue_doubt_purity`` (the other buckets keep the
        distance). ``proba`` (M, C): that classifier's probabilities of the same rows (e.g.
        PrefillClassifier.predict_proba); the doubt forms fall back to the distance without it.
        ``pool_size``: the unlabeled pool's size when ``features`` are only its best-scored rows (the
        backend passes its window; default len(features)). Those get (0.5, 1]; the rest 0.5 *
        score_samples(). Unlike score_samples(), a row's value depends on the rest of the pool: pass
        the whole pool (or its window) in one call."""
        self._check_fitted()
        if self.config["strategy"] != "tail_novelty":
            raise ValueError(f"queue_scores needs strategy='tail_novelty', not {self.config['strategy']!r}")
        x = check_features(features, dim=self.in_dim_)
        if proba is not None:
            proba = np.asarray(proba, dtype=np.float64)
            if proba.shape != (len(x), self.num_classes) or not np.all(np.isfinite(proba)):
                raise ValueError(f"proba must be finite ({len(x)}, {self.num_classes}) probabilities, got "
                                 f"shape {proba.shape}")
        if pool_size is not None and int(pool_size) < len(x):
            raise ValueError(f"pool_size {pool_size} is smaller than the {len(x)} rows given")
        p = self.predict_proba(x).astype(np.float64)
        t = p[:, self.tail_].sum(1) if self.tail_ else np.zeros(len(p))
        novelty = self.novelty_.score(x)
        scores = tail_or_novel(t, novelty)
        top = p.argmax(1)
        buckets = np.where(np.isin(top, self.tail_), top, NOVEL_BUCKET)
        refs = {int(k): self.tail_reference_[self.tail_reference_labels_ == k] for k in self.tail_}
        refs[NOVEL_BUCKET] = np.concatenate([self.novelty_.reference, self.tail_reference_])
        window = self.config["queue_window"]
        doubt = doubted = None
        if proba is not None and self.queue_needs_proba:
            doubt = np.clip(1.0 - proba[np.arange(len(x)), np.where(buckets >= 0, buckets, 0)], 0.0, 1.0)
            if self.config["queue_teach_by"] == "novel_doubt":
                doubt = doubt * np.clip(np.asarray(novelty, dtype=np.float64), 0.0, 1.0)
            purity = self.bucket_purity(buckets[window_rows(scores, window)],
                                        len(x) if pool_size is None else int(pool_size))
            doubted = [k for k, v in purity.items() if v >= self.config["queue_doubt_purity"]]
            log.info("queue: taught by the %s in tail classes %s, by the distance in the others (bucket purity %s, "
                     "needs %.2f)", self.config["queue_teach_by"], doubted,
                     {k: round(v, 2) for k, v in purity.items()}, self.config["queue_doubt_purity"])
        return greedy_queue(scores, buckets, x, refs, window, self.config["queue_teach"],
                            self.config["queue_teach_ramp"], doubt, doubted)

    def bucket_purity(self, window_buckets: np.ndarray, pool_size: int) -> dict[int, float]:
        """{tail class: its bucket's estimated share of rare examples} (mcm_core.queue.bucket_purity) for
        the buckets of the queue window's rows; 0 for a class without a false-alarm count (files saved
        before they were kept)."""
        alarms = self.fit_info_.get("tail_false_alarms", {})
        held = int(self.fit_info_.get("head_held_out", 0))
        window_buckets = np.asarray(window_buckets)
        return {k: (bucket_purity(alarms[str(k)], held, int((window_buckets == k).sum()), pool_size)
                    if str(k) in alarms else 0.0) for k in self.tail_}

    @property
    def queue_needs_proba(self) -> bool:
        """Whether queue_scores() teaches by a classifier's doubt (pass it ``proba``)."""
        return self.config["queue_teach_by"] != "distance"

    def novelty_score(self, features) -> np.ndarray:
        """N in [0, 1): calibrated kNN novelty against the labeled head rows. Every strategy has it,
        except a miner fitted on fewer than 2 head rows or saved before other strategies kept it."""
        self._check_fitted()
        if self.novelty_ is None:
            raise ValueError("this miner has no novelty reference (fewer than 2 labeled head rows, or a "
                             f"{self.config['strategy']!r} miner saved before every strategy kept one)")
        return self.novelty_.score(check_features(features, dim=self.in_dim_))

    @property
    def queue_size(self) -> int:
        """How many of the highest-scored examples queue_scores re-orders (0: the strategy has no queue)."""
        return self.config["queue_window"] if self.config["strategy"] == "tail_novelty" else 0

    @property
    def score_upper_bound(self) -> float:
        """Exact max of the score: 1 for tail_novelty and a cold-start reconstruction_cold; 2 for S; w_(1) + w_(2) (two largest
        weights, <= 1) for S_w. Before fit(): 2, a true bound for every strategy."""
        if not self.is_fitted:
            return float(RECONSTRUCTION_SCORE_BOUND)
        if self.config["strategy"] == "tail_novelty" or self.cold_start:
            return 1.0
        return float(self.ae_.upper_bound)

    @property
    def is_fitted(self) -> bool:
        needs = self.novelty_ if self.config["strategy"] == "tail_novelty" else self.ae_
        return self.rc_ is not None and needs is not None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Atomic write (temp file in the same directory + os.replace); plain tensors and dicts only,
        so load() can use torch.load(weights_only=True) and never executes code."""
        self._check_fitted()
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config,
                   "in_dim": self.in_dim_, "fit_info": self.fit_info_,
                   "rc": self.rc_.state_dict(), "tail": list(self.tail_)}
        if self.ae_ is not None:
            payload["ae"] = self.ae_.state()
        if self.novelty_ is not None:
            payload["novelty"] = {"reference": torch.from_numpy(self.novelty_.reference.copy()),
                                  "reference_distances": torch.from_numpy(self.novelty_.reference_distances.copy()),
                                  "tail_reference": torch.from_numpy(self.tail_reference_.copy()),
                                  "tail_reference_labels": torch.from_numpy(self.tail_reference_labels_.copy())}
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MinorityMiner":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"miner file not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt / foreign file
            raise ValueError(f"cannot read miner file {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a MinorityMiner file")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format version {payload.get('format_version')}")
        cfg = dict(payload["config"])
        # files written before these options existed: keep their exact (unweighted, all-rows) score
        cfg.setdefault("score_weighting", "none")
        cfg.setdefault("ae_train_on", "all")
        cfg.setdefault("rc_max_steps_per_epoch", None)
        cfg.setdefault("ae_max_steps_per_epoch", None)
        cfg.setdefault("rc_min_epochs", 0)
        cfg.setdefault("strategy", "reconstruction")
        cfg.setdefault("cold_start", "all")
        cfg.setdefault("queue_teach", 1.0)  # the queue's only form before the options
        cfg.setdefault("queue_teach_ramp", 0)
        num_classes, seed = cfg.pop("num_classes"), cfg.pop("seed")
        miner = cls(num_classes, seed, **cfg)
        miner.in_dim_ = int(payload["in_dim"])
        miner.fit_info_ = payload.get("fit_info", {})
        rc = RecalibrationLayer(miner.in_dim_, num_classes)
        rc.load_state_dict(payload["rc"])
        rc.eval()
        miner.rc_ = rc
        counts = miner.fit_info_.get("labeled_per_class")  # files from before "tail" was saved
        old_tail = skewness_tail(np.repeat(np.arange(num_classes), counts), num_classes) if counts else []
        miner.tail_ = [int(k) for k in payload.get("tail", old_tail)]
        try:
            if cfg["strategy"] == "tail_novelty" or "novelty" in payload:  # optional for the others
                nov = NoveltyScorer(miner.config["novelty_k"], miner.config["novelty_max_reference"], seed)
                nov.reference = payload["novelty"]["reference"].numpy().astype(np.float32)
                nov.reference_distances = payload["novelty"]["reference_distances"].numpy().astype(np.float64)
                miner.tail_reference_ = payload["novelty"]["tail_reference"].numpy().astype(np.float32)
                miner.tail_reference_labels_ = payload["novelty"]["tail_reference_labels"].numpy().astype(np.int64)
                if nov.reference.ndim != 2 or nov.reference.shape[1] != miner.in_dim_ \
                        or miner.tail_reference_.shape[1:] != (miner.in_dim_,):
                    raise ValueError(f"{path}: novelty reference has the wrong shape")
                miner.novelty_ = nov
            if cfg["strategy"] != "tail_novelty":
                ae = miner._new_scorer()
                ae.load_state(payload["ae"])
                miner.ae_ = ae
        except (KeyError, AttributeError) as exc:
            raise ValueError(f"{path}: incomplete miner file ({exc})") from exc
        return miner
