"""Give hotswapd the environment it was started with, before any of its code runs.

PyInstaller's bootloader points LD_LIBRARY_PATH at the bundle and re-executes itself,
so that the bundle's libraries are found, and leaves _PYI_* bookkeeping variables. The
dynamic loader reads LD_LIBRARY_PATH once, at exec: changing it now changes nothing
for this process. But every generation hotswapd spawns inherits os.environ, and a
server linked against the base image's glibc must never load the bundle's, nor see
variables that are not the user's (DESIGN rule 5: nothing internal leaks into
children).
"""

import os

for _name in [name for name in os.environ if name.startswith("_PYI_")]:
    del os.environ[_name]
_original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
if _original is None:
    os.environ.pop("LD_LIBRARY_PATH", None)
else:
    os.environ["LD_LIBRARY_PATH"] = _original
