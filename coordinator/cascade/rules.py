"""What a cascaded model escalates to: the cloud model name and the escalation policy."""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.cascade.policies import EscalationPolicy
from edgeshard.settings import SettingsError, check


@dataclass(frozen=True)
class CascadeRule:
    """An edge model's cascade: its cloud model's name and the policy choosing what escalates."""

    model: str  # the edge model
    cloud_model: str  # its name at the cloud tier
    policy: EscalationPolicy


DEFAULT_ESCALATION = ("normalized_entropy", 0.5)  # Sedna's CrossEntropy rule and default


def _pairs(name: str, entries: tuple[str, ...], example: str) -> dict[str, str]:
    out = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        check(bool(sep and key.strip() and value.strip()), name,
              f"{entry!r} is not {example}")
        check(key.strip() not in out, name, f"{key.strip()!r} given twice")
        out[key.strip()] = value.strip()
    return out


def parse_cascade(cascade: tuple[str, ...], escalation: tuple[str, ...]) -> dict[str, CascadeRule]:
    """``--cascade EDGE=CLOUD`` and ``--escalation MODEL=POLICY:THRESHOLD`` entries ->
    rules per edge model; SettingsError naming the option on anything malformed."""
    clouds = _pairs("cascade", cascade, "EDGE_MODEL=CLOUD_MODEL")
    rules = _pairs("escalation", escalation, "MODEL=POLICY:THRESHOLD")
    for model in rules:
        check(model in clouds, "escalation",
              f"{model!r} has a rule but no --cascade {model}=CLOUD_MODEL")
    out = {}
    for model, cloud_model in clouds.items():
        policy, threshold = DEFAULT_ESCALATION
        if model in rules:
            policy, sep, raw = rules[model].partition(":")
            try:
                threshold = float(raw) if sep else 0.0
            except ValueError:
                raise SettingsError(f"escalation: threshold {raw!r} of {model} is not a "
                                    "number") from None
        try:
            out[model] = CascadeRule(model, cloud_model, EscalationPolicy(policy, threshold))
        except ValueError as exc:
            raise SettingsError(f"escalation: {model}: {exc}") from None
    return out


def parse_audit(audit: tuple[str, ...], cascaded: set[str]) -> dict[str, float]:
    """``--audit MODEL=RATE`` entries -> the share of each cascaded model's confidently
    answered items also sent to the cloud; SettingsError naming the option otherwise."""
    rates = {}
    for model, raw in _pairs("audit", audit, "MODEL=RATE (e.g. mnist_edge=0.01)").items():
        try:
            rate = float(raw)
        except ValueError:
            raise SettingsError(f"audit: rate {raw!r} of {model} is not a number; give a "
                                "fraction from 0 to 1 (e.g. 0.01 for 1 %)") from None
        check(math.isfinite(rate) and 0.0 <= rate <= 1.0, "audit",
              f"rate {raw} of {model} must be a fraction from 0 to 1 (e.g. 0.01 for 1 %)")
        check(model in cascaded, "audit",
              f"{model!r} has no --cascade {model}=CLOUD_MODEL (audits go to its cloud model)")
        rates[model] = rate
    return rates
