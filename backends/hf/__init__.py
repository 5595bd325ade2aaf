"""Everything that imports transformers or torch: the backend, continuous batching, sampling, constrained
decoding, logprobs and the weight quantization methods. torch loads inside ``load``."""
