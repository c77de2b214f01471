import os

# Tests never reach the network: models and tokenizers come from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
