"""The engines. ``omp_env`` is imported first: it sets the OpenMP wait policy, which libgomp reads
once when llama_cpp or torch first loads it (see that module)."""

from backends import omp_env  # noqa: F401 - must run before any engine library is imported
