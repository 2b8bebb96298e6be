"""The model: the slim architecture, THE canonical in-memory model, the numpy references (float forward pass,
TFLite's integer arithmetic), preprocessing and class names. No framework imports at module level."""
