"""The canary rule: promote a new head or codec model, roll it back, or wait for more data.

A canary worker exports two things the rule reads (docs/canary.md):
- its shadow agreement with the stable model (split_infer/cloud/shadow.py), which must stay at
  or above `agreement_floor`;
- the p95 of its capture-to-detection latency, which must stay at or below
  `latency_p95_ceiling_s` (the reference design's 500 ms, the HPA's latency target too).

`decide()` is the rule as a pure function. Argo Rollouts applies the same rule in the cluster:
deploy/k8s/components/canary/analysistemplate.yaml is generated from THRESHOLDS by
`python -m split_infer.cloud.canary template` (tests/test_canary.py fails when the two differ).
Either metric worse than its threshold rolls back at once; a metric with fewer samples than its
minimum is not judged yet (Wait; Argo: inconclusive).

Why 0.95: on the street clip (frames the shipped basis was not calibrated on), a re-calibrated
basis of the same size, a healthy model refresh, agrees 0.98 with the shipped one (0.97 and 0.99
on the two halves); dropping to 48 of 64 components agrees 0.94, a codec model with its leading
component zeroed 0.72. 0.95 passes the refresh with margin for window noise and stops the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "components" / "canary" / \
    "analysistemplate.yaml"


class Decision(Enum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    WAIT = "wait"  # not enough samples to judge


@dataclass(frozen=True)
class CanaryThresholds:
    agreement_floor: float = 0.95  # shadow agreement (matched-box F1 with the stable model), at least
    latency_p95_ceiling_s: float = 0.5  # p95 capture-to-detection latency, at most
    min_shadow_frames: int = 200  # shadowed frames before the agreement is judged
    min_latency_frames: int = 200  # latency samples before the p95 is judged
    window: str = "10m"  # the Prometheus range the samples are counted and the p95 is taken over

    def __post_init__(self) -> None:
        if not 0 < self.agreement_floor <= 1:
            raise ValueError(f"agreement_floor must be in (0, 1], got {self.agreement_floor}")
        if not (self.latency_p95_ceiling_s > 0 and math.isfinite(self.latency_p95_ceiling_s)):
            raise ValueError(f"latency_p95_ceiling_s must be a positive number, got {self.latency_p95_ceiling_s}")
        if self.min_shadow_frames < 1 or self.min_latency_frames < 1:
            raise ValueError("the minimum sample counts must be at least 1")
        if not (self.window[:-1].isdigit() and self.window[-1] in "smh"):
            raise ValueError(f"window must be a Prometheus duration such as 10m, got {self.window!r}")


THRESHOLDS = CanaryThresholds()


@dataclass(frozen=True)
class CanaryMeasurement:
    """What the canary measured; None where a metric has no value yet."""

    shadow_agreement: float | None
    shadow_frames: int
    latency_p95_s: float | None
    latency_frames: int

    def __post_init__(self) -> None:
        a, p = self.shadow_agreement, self.latency_p95_s
        if a is not None and not (math.isnan(a) or 0 <= a <= 1):
            raise ValueError(f"shadow_agreement must be in [0, 1], got {a}")
        if p is not None and not (math.isnan(p) or 0 <= p < math.inf):
            raise ValueError(f"latency_p95_s must be a non-negative number, got {p}")
        if self.shadow_frames < 0 or self.latency_frames < 0:
            raise ValueError("sample counts cannot be negative")


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: tuple[str, ...]  # one per metric, why it passed, failed or could not be judged


def _known(value: float | None, samples: int, minimum: int) -> float | None:
    """The value, when there is one (a NaN is none: Argo's inconclusive) on enough samples."""
    return None if value is None or math.isnan(value) or samples < minimum else value


def decide(m: CanaryMeasurement, t: CanaryThresholds = THRESHOLDS) -> Verdict:
    """Rollback when either metric is worse than its threshold; else Wait while either lacks
    samples; else Promote. The same rule as the generated AnalysisTemplate."""
    failed, waiting, reasons = False, False, []
    agreement = _known(m.shadow_agreement, m.shadow_frames, t.min_shadow_frames)
    if agreement is None:
        waiting = True
        reasons.append(f"shadow agreement: {m.shadow_frames} of {t.min_shadow_frames} frames needed")
    else:
        failed |= agreement < t.agreement_floor
        reasons.append(f"shadow agreement {agreement:.4f} {'<' if agreement < t.agreement_floor else '>='} "
                       f"{t.agreement_floor}")
    p95 = _known(m.latency_p95_s, m.latency_frames, t.min_latency_frames)
    if p95 is None:
        waiting = True
        reasons.append(f"latency p95: {m.latency_frames} of {t.min_latency_frames} frames needed")
    else:
        failed |= p95 > t.latency_p95_ceiling_s
        reasons.append(f"latency p95 {p95:.3f} s {'>' if p95 > t.latency_p95_ceiling_s else '<='} "
                       f"{t.latency_p95_ceiling_s} s")
    decision = Decision.ROLLBACK if failed else Decision.WAIT if waiting else Decision.PROMOTE
    return Verdict(decision, tuple(reasons))


# -- the Argo Rollouts AnalysisTemplate, generated from the thresholds -------------------------------

_TEMPLATE = """\
# GENERATED by `python -m split_infer.cloud.canary template` from split_infer/cloud/canary.py's
# THRESHOLDS: edit those and regenerate (tests/test_canary.py fails when this file differs).
# Argo Rollouts analysis of a canary worker model (docs/canary.md): promote when the canary's
# shadow agreement with the stable model and its p95 latency both hold, roll back as soon as either
# is worse than its threshold. While a metric has fewer than its minimum samples in the window
# its query yields NaN: neither condition holds, so the measurement is inconclusive (wait); after
# `count` measurements the last one decides.
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: worker-canary
spec:
  args:
    # The canary's pod-template hash (the Rollout passes podTemplateHashValue: Latest); the
    # ServiceMonitor's podTargetLabels put it on every series of the canary's workers.
    - name: canary-hash
    # Optionally pin the canary's model_version (worker.release.model_version), a regex.
    - name: canary-version
      value: ".+"
    - name: namespace
      value: split-infer
    - name: prometheus-address
      value: http://prometheus-operated.monitoring.svc:9090
  metrics:
    - name: shadow-agreement
      interval: 1m
      count: 10
      failureLimit: 0
      inconclusiveLimit: 10
      successCondition: "!isNaN(result[0]) && result[0] >= {floor}"
      failureCondition: "!isNaN(result[0]) && result[0] < {floor}"
      provider:
        prometheus:
          address: "{{{{args.prometheus-address}}}}"
          query: |
            (
              avg(splitinfer_shadow_agreement_ratio{{{sel}}})
              and on()
              (sum(increase(splitinfer_shadow_frames_total{{{sel}}}[{window}])) >= {min_shadow})
            ) or on() vector(NaN)
    - name: latency-p95
      interval: 1m
      count: 10
      failureLimit: 0
      inconclusiveLimit: 10
      successCondition: "!isNaN(result[0]) && result[0] <= {ceiling}"
      failureCondition: "!isNaN(result[0]) && result[0] > {ceiling}"
      provider:
        prometheus:
          address: "{{{{args.prometheus-address}}}}"
          query: |
            (
              histogram_quantile(0.95, sum by (le) (
                rate(splitinfer_inference_latency_seconds_bucket{{{sel}}}[{window}])))
              and on()
              (sum(increase(splitinfer_inference_latency_seconds_count{{{sel}}}[{window}])) >= {min_latency})
            ) or on() vector(NaN)
"""
_SELECTOR = ('namespace="{{args.namespace}}",rollouts_pod_template_hash="{{args.canary-hash}}",'
             'model_version=~"{{args.canary-version}}"')


def analysis_template(t: CanaryThresholds = THRESHOLDS) -> str:
    """The AnalysisTemplate YAML for these thresholds."""
    return _TEMPLATE.format(floor=t.agreement_floor, ceiling=t.latency_p95_ceiling_s, window=t.window,
                            min_shadow=t.min_shadow_frames, min_latency=t.min_latency_frames, sel=_SELECTOR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m split_infer.cloud.canary", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tpl = sub.add_parser("template", help="write (or --check) the Argo Rollouts AnalysisTemplate")
    tpl.add_argument("--out", type=Path, default=TEMPLATE_PATH)
    tpl.add_argument("--check", action="store_true", help="exit 1 if the file differs from the thresholds'")
    dec = sub.add_parser("decide", help="the rule on measured values; prints the verdict as JSON")
    dec.add_argument("--agreement", type=float)
    dec.add_argument("--shadow-frames", type=int, required=True)
    dec.add_argument("--latency-p95", type=float)
    dec.add_argument("--latency-frames", type=int, required=True)
    args = ap.parse_args(argv)
    if args.command == "template":
        text = analysis_template()
        if args.check:
            same = args.out.is_file() and args.out.read_text() == text
            print(f"{args.out}: {'up to date' if same else 'DIFFERS from split_infer/cloud/canary.py; regenerate'}")
            return 0 if same else 1
        args.out.write_text(text)
        return 0
    try:
        verdict = decide(CanaryMeasurement(args.agreement, args.shadow_frames, args.latency_p95, args.latency_frames))
    except ValueError as e:
        ap.error(str(e))
    json.dump({"decision": verdict.decision.value, "reasons": list(verdict.reasons),
               "thresholds": asdict(THRESHOLDS)}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
