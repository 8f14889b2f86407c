"""`hotswapd doctor`: predicts what the runtime will do, by calling the same code."""
