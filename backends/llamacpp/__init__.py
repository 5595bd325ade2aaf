"""Everything that imports llama_cpp: the backend, its batch engine (one compute thread), sampling, chat
template, prompt cache and embeddings. Importing the package is cheap: llama_cpp loads inside ``load``."""
