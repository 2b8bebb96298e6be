"""The QDQ ONNX files people make today, made the way they make them: onnxruntime's `quantize_static` on a float
ONNX of the genuine graph (ours: `mobilenet-zoo convert FROZEN.pb --to onnx`), per channel, calibrated on real photos.

    python -m mobilenet_zoo.testing.ort_quantizer FROZEN.pb PHOTOS_DIR --activation-type QInt8 -o OUT.onnx

Activation types: "QInt8" (int8 activations, symmetric int8 weights: ORT's recommended CPU form) and "QUInt8"
(uint8 activations, int8 weights); both QDQ format, per-channel weights, MinMax calibration (ORT's default) on the
first 15 photos by name (`tf_converter.calibration_photos`: keep them out of any measurement). Needs onnxruntime
(the frozen graph is read without TensorFlow). onnxruntime keeps the float file's metadata, ours included.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mobilenet_zoo.testing.tf_converter import calibration_photos

ACTIVATION_TYPES = ("QInt8", "QUInt8")


class PhotoReader:
    """onnxruntime's CalibrationDataReader protocol over photos, as NCHW float32 batches of one in [-1, 1]."""

    def __init__(self, input_name: str, photos: list[Path], resolution: int) -> None:
        self.input_name, self.photos, self.resolution = input_name, list(photos), resolution
        self.remaining = iter(self.photos)

    def get_next(self) -> dict | None:
        from mobilenet_zoo.model.preprocess import load_image

        photo = next(self.remaining, None)
        if photo is None:
            return None
        return {self.input_name: load_image(photo, self.resolution).transpose(2, 0, 1)[None]}

    def rewind(self) -> None:
        self.remaining = iter(self.photos)


def float_onnx(frozen_graph: Path, out: Path) -> Path:
    """Our float ONNX (NCHW) of a frozen graph: what `mobilenet-zoo convert FROZEN.pb --to onnx` writes."""
    from mobilenet_zoo import formats

    return formats.write(formats.read(Path(frozen_graph)).fold(), Path(out), "onnx")


def quantize(
    float_model: Path, out: Path, photos: Path | list[Path], activation_type: str = "QInt8", resolution: int = 224
) -> Path:
    """`quantize_static` of a float NCHW ONNX to `out` (QDQ, per channel, int8 weights) and return `out`; calibrated on
    the first 15 photos of a folder, or on the given list of photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"unknown activation type {activation_type!r}; choose from {', '.join(ACTIVATION_TYPES)}")
    import onnx

    input_name = onnx.load(str(float_model), load_external_data=False).graph.input[0].name
    chosen = list(photos) if isinstance(photos, list) else calibration_photos(photos)
    reader = PhotoReader(input_name, chosen, resolution)
    CalibrationDataReader.register(PhotoReader)
    quantize_static(
        str(float_model),
        str(out),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=getattr(QuantType, activation_type),
        weight_type=QuantType.QInt8,
    )
    return Path(out)


def make(frozen_graph: Path, out: Path, photos: Path, activation_type: str = "QInt8") -> Path:
    """The float ONNX of `frozen_graph`, then its `quantize_static` QDQ file at `out`."""
    with tempfile.TemporaryDirectory() as folder:
        float_model = float_onnx(frozen_graph, Path(folder) / "float.onnx")
        return quantize(float_model, out, photos, activation_type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("frozen_graph", type=Path)
    parser.add_argument("photos", type=Path, help="folder of JPEG photos (the first 15 by name calibrate)")
    parser.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="QInt8")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    print(make(args.frozen_graph, args.out, args.photos, args.activation_type))


if __name__ == "__main__":
    main()
