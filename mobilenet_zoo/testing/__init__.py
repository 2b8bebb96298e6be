"""Fixture builders for tests, benchmarks and examples.

- `mobilenet_zoo.testing.tarball.write_official_tarball` writes a tarball laid out as the official release
  (random weights, real TensorFlow files);
- `mobilenet_zoo.testing.ray_cluster.LocalCluster` runs a multi-node Ray cluster on this machine whose worker
  nodes do not see chosen folders (a cluster without shared storage).

Production code never imports this package.
"""
