"""Data preparation and input pipeline for tvr-jax (imports nothing from `tvr_jax`)."""

import sys


def _load_triton_before_tensorflow() -> None:
    """Loads triton's native library now, where triton is installed and TensorFlow is not loaded yet.

    TensorFlow's wheels (2.20 and newer) load TensorFlow with RTLD_GLOBAL, which puts its LLVM in
    the process's global symbols; triton's library (3.7 and newer, installed with torch's CUDA
    build from PyPI) loaded after that binds to TensorFlow's LLVM and crashes the process (SIGSEGV
    in its initialisers) -- e.g. when a PyTorch CLIP from transformers is built after our input
    pipeline has run (tensorflow/tensorflow#124205). Loaded first, triton's library keeps its own
    symbols and both work; importing triton later reuses it. Without triton this does nothing.
    """
    if "tensorflow" in sys.modules:  # too late to help; loading triton's library now would crash
        return
    import ctypes
    import glob
    import importlib.util
    import os

    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        for lib in sorted(glob.glob(os.path.join(folder, "_C", "libtriton*.so"))):
            try:
                ctypes.CDLL(lib, mode=os.RTLD_NOW | os.RTLD_LOCAL)
            except OSError:  # a broken triton install is triton's problem, not the pipeline's
                pass
            return


_load_triton_before_tensorflow()
