"""An incremental autoencoder that adapts without forgetting its baseline.

A small multilayer perceptron learns to reproduce standardised healthy feature
vectors through a bottleneck; a window it cannot reproduce is unlike anything
healthy it has seen, even when no single feature is far off (a changed
*relationship* between features). It keeps learning from healthy windows in small
batches, and every update mixes in an equal number drawn from a bounded replay
buffer, so adapting to new normal data does not erase the old (experience replay
against catastrophic forgetting). Half the buffer is reserved for the baseline's
windows, which stay for good; the other half is a uniform reservoir sample of
the healthy windows learned since. A plain reservoir over everything would let
months of later windows evict the commissioning state.

Scoring goes through the ONNX export (:mod:`edge_agent.models.onnx_serving`);
training through scikit-learn, imported only when training starts.
"""

from __future__ import annotations

import numpy as np

from edge_agent.models.onnx_serving import OnnxRegressor, mlp_to_onnx


class IncrementalAutoencoder:
    """Bottleneck MLP autoencoder with reservoir replay.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden : int, optional
        Bottleneck width; default a third of the inputs, at least 2.
    batch_size : int
        Healthy windows per incremental update.
    replay_capacity : int
        Size of the replay buffer: half baseline windows, half a reservoir
        sample of later healthy windows.
    replay_ratio : float
        Replayed windows per new window in each update (0 turns replay off).
    baseline_epochs, update_epochs : int
        Passes over the data at the baseline fit and at each update.
    clip : float
        Inputs are clipped to ``±clip`` baseline scales (bounded error for
        wildly off windows; they score high anyway).
    seed : int
        Seed for weights and replay sampling.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(80, 2))
    >>> Z = np.hstack([latent, latent @ rng.normal(size=(2, 4))])     # 6 correlated features
    >>> ae = IncrementalAutoencoder(6, baseline_epochs=150).fit(Z)
    >>> typical = Z[np.argmax(np.abs(latent).sum(axis=1))]
    >>> broken = typical.copy(); broken[2:] = -broken[2:]             # relationship broken
    >>> bool(ae.score_one(broken) > 10 * ae.score_one(typical))
    True
    """

    def __init__(self, n_features: int, *, hidden: int | None = None, batch_size: int = 32,
                 replay_capacity: int = 256, replay_ratio: float = 1.0,
                 baseline_epochs: int = 100,
                 update_epochs: int = 1, learning_rate: float = 0.01, clip: float = 30.0,
                 threads: int = 1, seed: int = 0):
        self.n_features = n_features
        self.hidden = hidden or max(2, n_features // 3)
        self.batch_size = batch_size
        self.replay_capacity = replay_capacity
        self.replay_ratio = replay_ratio
        self.baseline_epochs = baseline_epochs
        self.update_epochs = update_epochs
        self.learning_rate = learning_rate
        self.clip = clip
        self.threads = threads
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._pending: list[np.ndarray] = []
        self.n_updates_ = 0
        self.n_seen_ = 0

    def _prepare(self, Z):
        return np.clip(np.atleast_2d(np.asarray(Z, dtype=np.float32)), -self.clip, self.clip)

    def _train(self, Z, epochs):
        self.mlp_.batch_size = min(self.batch_size, len(Z))  # partial_fit uses it as given
        import warnings

        from sklearn.exceptions import DataConversionWarning

        for _ in range(epochs):
            Z = Z[self._rng.permutation(len(Z))]
            with warnings.catch_warnings():  # one feature: y is a column, which is meant
                warnings.simplefilter("ignore", DataConversionWarning)
                self.mlp_.partial_fit(Z, Z)
        # scikit-learn appends to loss_curve_ at every call: months of updates would
        # grow it without bound
        del self.mlp_.loss_curve_[:-100]
        self._serving = None  # re-export before the next score

    def fit(self, Z, init_weights=None) -> "IncrementalAutoencoder":
        """Learn the baseline windows and seed the replay reservoir with them.

        ``init_weights`` (``[W1, b1, W2, b2]``, e.g. a fleet prior's) are where training
        starts instead of a random initialisation.
        """
        import warnings

        from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
        from sklearn.neural_network import MLPRegressor

        Z = self._prepare(Z)
        # One fit() call runs all baseline epochs in minibatches without the
        # per-call input validation that partial_fit pays each time.
        self.mlp_ = MLPRegressor(hidden_layer_sizes=(self.hidden,), activation="tanh",
                                 solver="adam", learning_rate_init=self.learning_rate,
                                 alpha=1e-3, batch_size=min(self.batch_size, len(Z)),
                                 max_iter=self.baseline_epochs, tol=0.0,
                                 n_iter_no_change=self.baseline_epochs + 1,
                                 random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", DataConversionWarning)  # one feature: y a column
            if init_weights is not None:
                # sklearn starts from existing weights only with warm_start, once it has
                # some: one step builds them (and the optimiser), then they are replaced
                self.mlp_.set_params(warm_start=True)
                self.mlp_.partial_fit(Z[:self.mlp_.batch_size], Z[:self.mlp_.batch_size])
                W1, b1, W2, b2 = (np.array(w, dtype=np.float64) for w in init_weights)
                if W1.shape != self.mlp_.coefs_[0].shape or W2.shape != self.mlp_.coefs_[1].shape:
                    raise ValueError(f"initial weights {W1.shape} do not fit this network "
                                     f"{self.mlp_.coefs_[0].shape}")
                self.mlp_.coefs_, self.mlp_.intercepts_ = [W1, W2], [b1, b2]
            self.mlp_.fit(Z, Z)
        self._serving = None
        keep = self._rng.permutation(len(Z))[: self.replay_capacity // 2]
        self.anchor_ = Z[np.sort(keep)]
        # allocated whole at once: bounded memory that does not creep up as it fills
        self._reservoir = np.zeros((self.replay_capacity - len(self.anchor_), self.n_features),
                                   dtype=np.float32)
        self._filled = 0
        return self

    @property
    def reservoir_(self) -> np.ndarray:
        """The healthy windows learned since the baseline that are kept for replay."""
        return self._reservoir[:self._filled]

    def _add_to_reservoir(self, Z):
        capacity = len(self._reservoir)
        for z in Z:  # Vitter's algorithm R: every window seen is equally likely kept
            self.n_seen_ += 1
            if self._filled < capacity:
                self._reservoir[self._filled] = z
                self._filled += 1
            else:
                j = self._rng.integers(self.n_seen_)
                if j < capacity:
                    self._reservoir[j] = z

    def partial_fit(self, Z) -> "IncrementalAutoencoder":
        """One incremental update on healthy windows ``Z`` mixed with as many replayed."""
        Z = self._prepare(Z)
        buffer = np.vstack([self.anchor_, self.reservoir_])
        n_replay = int(round(self.replay_ratio * len(Z)))
        replay = buffer[self._rng.integers(len(buffer), size=n_replay)]
        self._train(np.vstack([Z, replay]), self.update_epochs)
        self._add_to_reservoir(Z)
        self.n_updates_ += 1
        return self

    def learn_one(self, z, train: bool = True) -> None:
        """Queue a healthy window; train when a batch is complete and ``train`` allows.

        With ``train`` false (the agent is behind or over its CPU budget) the
        window waits; at most four batches wait, the oldest giving way.
        """
        self._pending.append(np.asarray(z, dtype=np.float32))
        del self._pending[:-4 * self.batch_size]
        while train and len(self._pending) >= self.batch_size:
            batch = np.vstack(self._pending[:self.batch_size])
            del self._pending[:self.batch_size]
            self.partial_fit(batch)

    # -- scoring ------------------------------------------------------------------
    @property
    def serving(self) -> OnnxRegressor:
        """The ONNX Runtime session of the current weights (exported on demand)."""
        if getattr(self, "_serving", None) is None:
            model = mlp_to_onnx(self.mlp_.coefs_, self.mlp_.intercepts_, "tanh")
            self._serving = OnnxRegressor(model, self.n_features, threads=self.threads)
        return self._serving

    def score(self, Z) -> np.ndarray:
        """Mean squared reconstruction error per window, via ONNX Runtime."""
        Z = self._prepare(Z)
        return np.mean((self.serving.predict(Z) - Z) ** 2, axis=1)

    def score_one(self, z) -> float:
        return float(self.score(z)[0])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_serving"] = None  # an ONNX Runtime session is rebuilt, not saved
        return state

    def score_sklearn(self, Z) -> np.ndarray:
        """The same error computed by scikit-learn (for the parity test and benchmark)."""
        Z = self._prepare(Z)
        return np.mean((self.mlp_.predict(Z).reshape(Z.shape) - Z) ** 2, axis=1)
