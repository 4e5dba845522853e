"""What ``edge-coordinator calibrate`` found, and how it says so.

A threshold is only meaningful with the temperature the nodes apply to the probabilities
it is compared with; each :class:`ThresholdChoice` carries that temperature, and the
printed lines name it.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.cascade.calibration import SweepRow

__all__ = ["CalibrationResult", "ThresholdChoice"]


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold picked for one served temperature, and what it does.

    ``chosen.threshold`` is the printable value (``short_threshold``); ``rows`` the sweep
    on the fitting part; ``holdout`` the figures of exactly ``chosen.threshold`` on the
    hold-out part.
    """

    temperature: float
    chosen: SweepRow
    rows: list[SweepRow]
    holdout: dict


@dataclass
class CalibrationResult:
    """Outcome of one calibration: fitted temperature, threshold sweep and chosen row.

    ``temperature`` is the fitted one, which ``--write`` stores (the server's
    ``temperature_before`` times the fitted factor); ``ece_*`` are expected calibration
    errors on the fitting part before and after the fit. ``served`` is the threshold for
    the temperature the nodes will serve (``fitted`` when it is written, the current one
    otherwise); ``fitted`` the one for the fitted temperature.
    """

    model: str
    policy: str
    temperature_before: float
    temperature: float  # fitted: temperature_before x the fitted factor
    ece_before: float
    ece_after: float
    served: ThresholdChoice
    fitted: ThresholdChoice
    calibration_summary: dict
    fit_name: str = "calibration split"
    data: dict | None = None

    @property
    def written(self) -> bool:
        """Whether the served threshold is the fitted temperature's (``--write``)."""
        return self.served is self.fitted

    @property
    def chosen(self) -> SweepRow:
        """The served threshold's row of the sweep on the fitting part."""
        return self.served.chosen

    @property
    def rows(self) -> list[SweepRow]:
        """The sweep for the served temperature."""
        return self.served.rows

    @property
    def holdout(self) -> dict:
        """The served threshold on the hold-out part."""
        return self.served.holdout

    def lines(self) -> list[str]:
        """The human-readable summary lines, ending with the ``--escalation`` flag(s)."""
        c, h, t = self.chosen, self.holdout, self.served.temperature
        if self.written:
            served = (f"the fitted temperature {t:.4g}, served once the model's nodes "
                      "restart on the written calibration.json")
        else:
            served = f"the temperature {t:.4g} the nodes serve now"
        lines = [
            f"model {self.model}: temperature {self.temperature_before:.4g} served -> "
            f"{self.temperature:.4g} fitted on the {self.fit_name} "
            f"(ECE {self.ece_before:.4f} -> {self.ece_after:.4f})",
            f"policy {self.policy} at {served}: threshold {_text(c.threshold)} escalates "
            f"{c.escalated} of {c.n} ({c.escalation_rate:.1%}) of the {self.fit_name} "
            f"(cascade {c.cascade_accuracy:.4f}, random {c.random_accuracy:.4f}, "
            f"oracle {c.oracle_accuracy:.4f})",
            _holdout_line(h),
            f"use: --escalation {self.model}={self.policy}:{_text(c.threshold)} "
            f"(for temperature {t:.4g})",
        ]
        if not self.written:
            f, fh = self.fitted.chosen, self.fitted.holdout
            lines.append(
                f"after --write (temperature {self.temperature:.4g}, once the nodes restart):"
                f" --escalation {self.model}={self.policy}:{_text(f.threshold)} "
                f"(hold-out: cascade {fh['cascade_accuracy']:.4f} at {fh['escalated']} of "
                f"{fh['n']} escalated)")
        return lines


def _text(threshold: float | None) -> str:
    """A threshold as printed: ``repr`` round-trips, so the value used is the value shown."""
    return "" if threshold is None else repr(threshold)


def _holdout_line(h: dict) -> str:
    return (f"hold-out ({h['n']} items): edge only {h['edge_only_accuracy']:.4f}, "
            f"cloud only {h['cloud_only_accuracy']:.4f}, cascade {h['cascade_accuracy']:.4f} "
            f"at {h['escalated']} of {h['n']} escalated ({h['escalation_rate']:.1%}), "
            f"random at that rate {h['random_accuracy']:.4f}, oracle "
            f"{h['oracle_accuracy']:.4f}, {h['cloud_calls_per_1000']:.0f} cloud items per "
            "1,000")
