"""Test helpers shipped with the package: official-layout fixture tarballs and a numpy reference forward pass.

`mobilenet_zoo.testing.tarball.write_official_tarball` writes a tarball laid out as the official release
(random weights, real TensorFlow files); `mobilenet_zoo.testing.numpy_reference.forward` computes logits
without any framework.
"""
