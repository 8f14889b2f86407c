"""The operating side of a running hotswapd: control socket, status, metrics."""
