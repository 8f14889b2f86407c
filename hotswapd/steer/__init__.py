"""The kernel-facing selector: which socket of a SO_REUSEPORT group gets each new connection.

`bpf` builds and attaches the classic BPF program, `group` models the kernel's slot
order of a group, `probe` reserves the source that marks hotswapd's own probe
connections, and `observe` reads what the kernel says about the sockets (accept
queue, listening state, foreign members). Nothing here imports the rest of hotswapd,
and importing it costs well under 2 ms: it loads before the first fork.
"""
