"""Data: real handwritten digits (scikit-learn), image tokenizers, an offline text corpus, rows."""
