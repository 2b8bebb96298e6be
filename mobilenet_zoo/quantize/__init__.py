"""Post-training quantization of a float model: uint8 per-tensor (the official `_quant` scheme, made good by
cross-layer equalization and bias correction), int8 per-channel and float16 (today's TFLite defaults)."""
