"""The zoo: the registry of variants, safe downloads and extraction, the cache, the bundled samples, and
resolving what a user names to a canonical model."""
