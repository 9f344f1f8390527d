"""Dataset preparation: archive -> PNG views + CSV metadata, splits, pseudonyms, previews."""
