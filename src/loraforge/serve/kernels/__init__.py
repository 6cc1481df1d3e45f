"""The engine's C++ CPU kernels (csrc/), how they are built and loaded (loader.py), and the one operations
interface the model calls, chosen once per device and dtype (ops.py)."""
