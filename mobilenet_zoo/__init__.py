"""mobilenet-zoo: the MobileNet V1 model zoo, its converters and their parity checks.

The package root stays light: heavy frameworks are imported only by the modules that need them.
"""

__version__ = "0.1.0"
