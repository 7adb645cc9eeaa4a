"""What one server process serves: the registry's promoted model with its merchants' labels, kept up
to date without a restart.

:meth:`Live.refresh` looks at the registry (one small SQLite read): a new promotion loads that model
and swaps it in whole (requests in flight finish on the one they started with); a new label change
reads only the changed merchants' rows. A merchant whose new row is damaged keeps its last good
labels and is quarantined (said by ``/health`` and ``/ready``); every other merchant moves on. A
failed look (a transient read error) is retried with a growing pause and never marks anything bad
for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tagger.serving.onnx_predictor import LabelView, OnnxPredictor
from tagger.serving.registry import Registry, generation_name

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Served:
    """One model as served: its promotion, predictor and what scores requests with it. A request
    takes one :class:`Served` and keeps it to the end."""

    promotion: int
    version: str
    predictor: OnnxPredictor
    scorer: Any
    seq: int


class Live:
    """The served model of ``registry`` in this process; ``make_scorer(predictor)`` builds what
    answers requests with a predictor (the API's request scorer)."""

    def __init__(self, registry: Registry, make_scorer: Callable[[OnnxPredictor], Any] = lambda p: None):
        self.registry, self.make_scorer = registry, make_scorer
        self.quarantined: dict[str, str] = {}
        self.last_reload_error: str | None = None
        self.failures = 0
        self.reload_failures = 0  # every failed look since start (failures: the ones in a row)
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.thresholds_seen = 0  # the last threshold row applied
        self.current: Served = self._load(registry.serving())

    @property
    def predictor(self) -> OnnxPredictor:
        return self.current.predictor

    def _load(self, served: tuple[int, str]) -> Served:
        promotion, version = served
        view, quarantined = self.registry.label_view(version)
        base = self.registry.model(version).predictor
        predictor = base.with_view(view)
        self.quarantined = quarantined
        for account, why in quarantined.items():
            log.error("merchant %r quarantined: its last good labels keep serving: %s", account, why)
        scorer = self.make_scorer(predictor)
        self._raise(scorer, version)
        return Served(promotion, version, predictor, scorer, _number(view.generation))

    def _raise(self, scorer, version: str) -> None:
        """Give ``scorer`` the thresholds raised from reviews under model ``version``."""
        self.thresholds_seen, raised = self.registry.raised_thresholds(version)
        if scorer is not None:
            scorer.raised = raised

    def refresh(self, now: bool = False) -> bool:
        """Catch up with the registry; True if what is served changed. ``now``: even while backing
        off after a failure (an admin change made in this process)."""
        if not now and time.monotonic() < self._retry_at:
            return False
        with self._lock:
            try:
                changed = self._catch_up()
            except Exception as err:  # a failed look must never take the service down
                self.failures += 1
                self.reload_failures += 1
                pause = min(MAX_BACKOFF_S, 0.25 * 2**self.failures)
                self._retry_at = time.monotonic() + pause
                self.last_reload_error = f"{type(err).__name__}: {err} (retry in {pause:.2f} s)"
                log.error("registry reload failed, still serving %s: %s", self.current.version, err)
                return False
            self.failures, self._retry_at, self.last_reload_error = 0, 0.0, None
            return changed

    def _catch_up(self) -> bool:
        served, last = self.registry.head()
        current = self.current
        if served is not None and served[0] != current.promotion:
            self.current = self._load(served)
            if served[1] != current.version:
                self.registry.forget(current.version)
            log.info("now serving %s (promotion %d)", served[1], served[0])
            return True
        if self.registry.threshold_head() != self.thresholds_seen:
            self._raise(current.scorer, current.version)
            if last <= current.seq:
                return True
        if last <= current.seq:
            return False
        seq, changed, damaged = self.registry.rows_since(current.version, current.seq)
        predictor = current.predictor
        state = predictor.view.state
        view = LabelView(generation_name(seq), state.replace(changed) if changed else state)
        predictor.use(view, list(changed))
        for account in changed:
            self.quarantined.pop(account, None)
        for account, why in damaged.items():
            self.quarantined[account] = why
            log.error("merchant %r quarantined: its last good labels keep serving: %s", account, why)
        self.current = Served(current.promotion, current.version, predictor, current.scorer, seq)
        return True


def _number(generation: str) -> int:
    return int(generation.lstrip("g"))
