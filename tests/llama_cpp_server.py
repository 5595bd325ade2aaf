"""``python -m tests.llama_cpp_server ARGS``: llama-cpp-python's own OpenAI server (the real remote
engine in the tests), with the model parameters this CPU needs (``backends.llamacpp.open``)."""

import runpy
import sys

from backends.llamacpp.open import patch_for_this_process

if __name__ == "__main__":
    patch_for_this_process()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
