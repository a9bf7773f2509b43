"""The config keys that name tokenizer files. Every tokenizer implementation's errors point at
them (tokenizer.py's SentencePiece ones, bpe.py's tokenizers-library ones), so they live below both.
"""
VOCAB_FILE_KEY = "processor.tokenizer.vocab_file"
TOKENIZER_FILE_KEY = "processor.tokenizer.tokenizer_file"
MERGES_FILE_KEY = "processor.tokenizer.merges_file"
TYPE_KEY = "processor.tokenizer.type"
