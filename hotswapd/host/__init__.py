"""Facts and primitives of the host shared by the runtime and doctor (leaf modules)."""
