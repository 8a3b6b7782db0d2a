"""Training: Loc3R-VLM on the joint objective, data from procedural scenes, the embedded model."""
