"""What the benchmarks share, one purpose per module: ``workload`` (prompts, one timed request),
``harness`` (the app in-process or as ``python app.py``, llama-server, memory), ``clients`` (Gradio and
/v1 load), ``raw_engines`` and ``report`` (the serving benchmark's raw engines and results), ``hf_model``
(the embedded model's transformers checkpoint for the batching benchmarks)."""
