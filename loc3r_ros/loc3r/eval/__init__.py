"""Evaluation: the benchmarks' answer and localization metrics, reports and baselines.

`answers` (EM@1 / refined EM, every official variant), `localization` (Acc@0.5m/1.0m/15deg/30deg),
`report` (cases, aggregates, random and majority baselines, Markdown), `run` (`loc3r eval`).
"""
