"""Client commands (`ctl`, `deploy`): they talk to a running hotswapd, import no core."""
