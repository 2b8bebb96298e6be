"""What the tool does with models: convert, verify (parity, the accuracy gate, per-layer error), predict,
evaluate, bench, plot, and the same on a Ray cluster."""
