"""The quantized MobileNets people make today, made the way they make them: TensorFlow's own `TFLiteConverter` on a
frozen float graph (`optimizations=[DEFAULT]`), each flavour, full-integer ones calibrated on real photos.

    python -m mobilenet_zoo.testing.tf_converter FROZEN.pb PHOTOS_DIR --flavour int8 -o OUT.tflite

Flavours: "int8", "uint8", "float32" (full-integer int8 cores whose edges are int8, uint8 or float32: the
converter's `inference_input_type` / `inference_output_type`), "dynamic" (dynamic-range: int8 weights, float
activations) and "float16" (float16 weights behind DEQUANTIZE). Needs TensorFlow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FULL_INTEGER = ("int8", "uint8", "float32")
FLAVOURS = (*FULL_INTEGER, "dynamic", "float16")
CALIBRATION_PHOTOS = 15  # the first 15 photos (sorted by name) calibrate: keep them out of any measurement
INPUT_TENSOR, OUTPUT_TENSOR = "input:0", "MobilenetV1/Predictions/Reshape_1:0"


def calibration_photos(photos: Path, count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """The photos a full-integer flavour is calibrated on: the first `count` JPEGs of `photos`, by name."""
    return sorted(Path(photos).glob("*.jpg"))[:count]


def convert(frozen_graph: Path, flavour: str, out: Path, photos: Path, resolution: int = 224) -> Path:
    """Write `flavour` of the frozen float graph to `out` with TF's converter and return `out`."""
    import tensorflow as tf

    from mobilenet_zoo.model.preprocess import load_image

    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(frozen_graph).read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    function = wrapped.prune(
        wrapped.graph.get_tensor_by_name(INPUT_TENSOR), wrapped.graph.get_tensor_by_name(OUTPUT_TENSOR)
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], wrapped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if flavour in FULL_INTEGER:
        chosen = calibration_photos(photos)
        converter.representative_dataset = lambda: ([load_image(p, resolution)[None]] for p in chosen)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if flavour != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, flavour)
    elif flavour == "float16":
        converter.target_spec.supported_types = [tf.float16]
    Path(out).write_bytes(converter.convert())
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frozen_graph", type=Path)
    parser.add_argument("photos", type=Path, help="folder of JPEG photos (the first 15 by name calibrate)")
    parser.add_argument("--flavour", choices=FLAVOURS, default="int8")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    print(convert(args.frozen_graph, args.flavour, args.out, args.photos))


if __name__ == "__main__":
    main()
