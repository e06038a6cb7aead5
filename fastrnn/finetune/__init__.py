"""Fine-tuning Hugging Face encoders with a fastrnn LSTM/GRU classification head.

    from fastrnn.finetune import BertRNNClassifier
    model = BertRNNClassifier(labels=["negative", "positive"])   # all-MiniLM-L6-v2 + BiLSTM head
    logits = model(**tokenizer(texts, padding=True, return_tensors="pt"))

Command line: `fastrnn-finetune train|eval|predict|compare` (or `python -m fastrnn.finetune`).
Needs transformers: `pip install --no-build-isolation -e ".[finetune]"` in the fastrnn checkout
(fastrnn is not on PyPI).
"""

from .config import TrainConfig
from .errors import CheckpointError, DataError, EncoderNotFoundError, FinetuneError, OptionError
from .model import BertRNNClassifier, HeadConfig

__all__ = ["BertRNNClassifier", "HeadConfig", "TrainConfig", "EncoderNotFoundError", "FinetuneError", "DataError",
           "CheckpointError", "OptionError"]
# Training: fastrnn.finetune.train.train(TrainConfig(...)); comparison: fastrnn.finetune.compare.compare(...).
