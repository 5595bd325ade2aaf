"""Benchmarks: ratios measured in one run, the app against the raw engine and llama.cpp's own tools.

Every module at this level is one benchmark, run from the repository root as
``python -m benchmarks.<name> [--help]``:

    bench_serving                the raw engine vs the app (Gradio /chat, REST SSE, /v1) and llama-server
    bench_fairness               N streaming /v1 clients on S slots: waits, the queue, llama-server beside
    bench_overhead               the app's idle CPU and the batch scheduler's steps
    bench_shared_cpu             the app and llama-server / generate() with busy processes beside them
    bench_compute_thread         the chat's batch engine before and after a Compare generation
    bench_speculative            n-gram speculative decoding vs plain decoding
    bench_kv_cache               KV-cache quantization: quality and memory
    bench_imatrix                importance-matrix quantization: the KLD it buys per GGUF type
    bench_scoring                the lab's Evaluate beside llama-perplexity --kl-divergence
    bench_transformers_batching  the continuous batcher vs generate()
    bench_transformers_fallback  a generate() beside a live batcher, three ways
    bench_transformers_quant     the transformers quantization methods through the lab
    bench_pool                   the model pool: a cold load vs a resident model, --models-max 1 vs 2

What they share is in ``benchmarks.common``. ``build_llama_tools.sh`` builds llama.cpp's tools.
"""
