"""Staged rollouts gated on serving health (ADR 0007).

```
table      the (state, event) -> state tables for rollouts and stages
plan       which devices each stage reaches, cohort by cohort
gates      the checks, evaluated per cohort against the control group
spec       the operator's options, checked at the edge
evidence   windowed telemetry and device states read into the gates' inputs
service    Rollouts: start, plan, the operator's verbs, the document
scheduler  advances running rollouts (started in the app's cleanup_ctx)
```
"""
