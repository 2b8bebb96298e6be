"""Fixture builders for tests and examples: official-layout tarballs with random weights.

`mobilenet_zoo.testing.tarball.write_official_tarball` writes a tarball laid out as the official release
(random weights, real TensorFlow files). Production code never imports this package.
"""
