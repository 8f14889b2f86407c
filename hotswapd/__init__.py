"""hotswapd: PID 1 that hot-swaps a Go server on shared sockets, gated and rolled back.

Kept empty of imports: `hotswapd` runs as PID 1 and spawns generation 1 before any
heavy module is loaded.
"""

__version__ = "0.1.0"
